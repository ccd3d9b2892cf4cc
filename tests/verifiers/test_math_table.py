r"""Regression table for ``MathVerifier``: (family, reference, response, expected status).

Grow it from real runs: ``mpo-gym audit-math FILE.jsonl`` prints disagreements with
math-verify; a confirmed false negative or false positive becomes a row here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpo_gym.verifiers import MathVerifier

C, W, N = "correct", "incorrect", "no_answer"

LONG_SELF_CORRECTION = r"""We need the sum of the roots of $x^2 - 5x + 6 = 0$.
By Vieta the sum is $-\frac{b}{a}$. Wait, $b = -5$, so the sum is $-(-5)/1 = 5$.
Hmm, let me double-check by factoring: $(x-2)(x-3) = 0$, roots $2$ and $3$, sum $5$.
At first I thought the answer was $\boxed{6}$, but that was the product.
So the final answer is $\boxed{5}$."""

SEVERAL_BOXES = r"""First part: $a = \boxed{3}$. Second part: $b = \boxed{4}$.
Therefore $a^2 + b^2 = 25$ and the hypotenuse is $\boxed{5}$."""

TRUNCATED = r"""Let us compute step by step. $2 + 2 = 4$, then $4 \times 3 = 12$.
So the answer is $\boxed{12"""

QWEN_STYLE = r"""To solve the problem, we first find the area of the rectangle.

1. The length is $8$ cm and the width is $5$ cm.
2. The area is $8 \times 5 = 40$ square centimeters.

Thus, the area of the rectangle is \(\boxed{40 \text{ cm}^2}\)."""

GSM8K_STYLE = """Natalia sold 48/2 = 24 clips in May.
Natalia sold 48+24 = 72 clips altogether in April and May.
#### 72"""

FINAL_ANSWER_STYLE = r"""The discriminant is $b^2 - 4ac = 16 - 12 = 4$, so there are two roots,
$x = \frac{-4 \pm 2}{2}$, i.e. $-1$ and $-3$.

The final answer is $-1, -3$. I hope it is correct."""

NUMBERS_IN_PROSE = "I computed 17 first, then 42, then 99 and I am not sure which is right."

CASES: list[tuple[str, str, str, str]] = [
    # -- extraction ------------------------------------------------------------------------
    ("extract", "5", LONG_SELF_CORRECTION, C),
    ("extract", "6", LONG_SELF_CORRECTION, W),
    ("extract", "5", SEVERAL_BOXES, C),
    ("extract", "3", SEVERAL_BOXES, W),
    ("extract", "12", TRUNCATED, N),
    ("extract", "3", "Part one gives $\\boxed{3}$. For part two we get \\boxed{\\frac{1", N),
    ("extract", "3", "Let me compute the sum carefully.\nThe final answer is", N),
    ("extract", "3", "We have $x = 3$ and therefore the final answer", N),
    ("extract", "40", QWEN_STYLE, C),
    ("extract", "72", GSM8K_STYLE, C),
    ("extract", "24", GSM8K_STYLE, W),
    ("extract", "-1, -3", FINAL_ANSWER_STYLE, C),
    ("extract", "-3, -1", FINAL_ANSWER_STYLE, C),
    ("extract", "-1", FINAL_ANSWER_STYLE, W),
    ("extract", "42", NUMBERS_IN_PROSE, N),
    ("extract", "17", NUMBERS_IN_PROSE, N),
    ("extract", "7", "Answer: 7", C),
    ("extract", "7", "**Answer:** $7$", C),
    ("extract", "7", "So the answer is 7.", C),
    ("extract", "7", "Therefore the final answer is: $\\boxed{7}$", C),
    ("extract", "7", "\\fbox{7}", C),
    ("extract", "7", "\\boxed 7", C),
    ("extract", "7", "$\\boxed{\\boxed{7}}$", C),
    ("extract", "7", "7", C),
    ("extract", "7", "  $7$  ", C),
    ("extract", "7", "", N),
    ("extract", "7", "I don't know.", N),
    ("extract", "7", "The answer is \\boxed{}", N),
    ("extract", "7", "We get 3 + 4 = 7 after simplifying the expression above", N),
    ("extract", "\\frac{1}{2}", "Answer: $\\frac{1}{2}$.", C),
    ("extract", "8", "#### 8", C),
    ("extract", "8", "The final answer is $8$. I hope it is correct.", C),
    ("extract", "8", "The answer is 9.\nWait, I made an error. The answer is 8.", C),
    ("extract", "9", "The answer is 9.\nWait, I made an error. The answer is 8.", W),
    # -- integers and simple numbers ------------------------------------------------------
    ("number", "12", "\\boxed{12}", C),
    ("number", "12", "\\boxed{012}", C),
    ("number", "12", "\\boxed{12.0}", C),
    ("number", "12", "\\boxed{13}", W),
    ("number", "-4", "\\boxed{-4}", C),
    ("number", "-4", "\\boxed{4}", W),
    ("number", "0", "\\boxed{0}", C),
    ("number", "0", "\\boxed{-0}", C),
    ("number", "0", "\\boxed{0.0001}", W),
    ("number", "1000", "\\boxed{1,000}", C),
    ("number", "1000", "\\boxed{1{,}000}", C),
    ("number", "1000000", "\\boxed{1,000,000}", C),
    ("number", "1000", "\\boxed{1\\,000}", C),
    ("number", "1000", "\\boxed{100}", W),
    ("number", "1500", "\\boxed{1.5 \\times 10^{3}}", C),
    ("number", "1500", "\\boxed{1.5e3}", C),
    ("number", "15000", "\\boxed{1.5 \\times 10^{3}}", W),
    ("number", "2^{100}", "\\boxed{1267650600228229401496703205376}", C),
    ("number", "2^{100}", "\\boxed{1267650600228229401496703205377}", W),
    ("number", "10", "\\boxed{\\$10}", C),
    ("number", "10", "\\boxed{10 dollars}", C),
    ("number", "40_9", "\\boxed{40}", W),
    ("number", "40", "\\boxed{40_9}", W),
    ("number", "40_9", "\\boxed{40_{9}}", C),
    ("number", "1011_2", "\\boxed{1011_{(2)}}", C),
    # -- fractions, decimals, mixed numbers ------------------------------------------------
    ("fraction", "\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", C),
    ("fraction", "\\frac{1}{2}", "\\boxed{\\tfrac12}", C),
    ("fraction", "\\frac{1}{2}", "\\boxed{1/2}", C),
    ("fraction", "\\frac{1}{2}", "\\boxed{0.5}", C),
    ("fraction", "\\frac{1}{2}", "\\boxed{2/4}", C),
    ("fraction", "\\frac{1}{2}", "\\boxed{\\frac{2}{1}}", W),
    ("fraction", "\\frac{1}{3}", "\\boxed{0.3333333}", C),
    ("fraction", "\\frac{1}{3}", "\\boxed{0.333}", W),
    ("fraction", "\\frac{1}{3}", "\\boxed{0.34}", W),
    ("fraction", "-\\frac{3}{4}", "\\boxed{\\frac{-3}{4}}", C),
    ("fraction", "-\\frac{3}{4}", "\\boxed{-0.75}", C),
    ("fraction", "-\\frac{3}{4}", "\\boxed{\\frac{3}{4}}", W),
    ("fraction", "\\frac{5}{2}", "\\boxed{2\\frac{1}{2}}", C),
    ("fraction", "\\frac{5}{2}", "\\boxed{2.5}", C),
    ("fraction", "\\frac{7}{3}", "\\boxed{2\\frac{1}{3}}", C),
    ("fraction", "3.14", "\\boxed{\\pi}", W),
    ("fraction", "1000000", "\\boxed{1000000.5}", W),
    ("fraction", "1000000", "\\boxed{1000000.0}", C),
    ("fraction", "3.14159", "\\boxed{3.14159265}", C),
    ("fraction", "\\frac{1}{7}", "\\boxed{0.142857}", C),
    ("fraction", "\\frac{1}{7}", "\\boxed{0.1428}", W),
    ("fraction", "0.25", "\\boxed{\\frac14}", C),
    # -- radicals and constants --------------------------------------------------------------
    ("radical", "\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}", C),
    ("radical", "2\\sqrt{3}", "\\boxed{\\sqrt{12}}", C),
    ("radical", "2\\sqrt{3}", "\\boxed{2*sqrt(3)}", C),
    ("radical", "2\\sqrt{3}", "\\boxed{3\\sqrt{2}}", W),
    ("radical", "\\sqrt[3]{8}", "\\boxed{2}", C),
    ("radical", "\\sqrt{2}", "\\boxed{\\sqrt2}", C),
    ("radical", "\\sqrt{2}", "\\boxed{1.41421356}", C),
    ("radical", "\\sqrt{2}", "\\boxed{1.41}", W),
    ("radical", "5\\sqrt{2} - 1", "\\boxed{-1 + 5\\sqrt{2}}", C),
    ("radical", "\\pi", "\\boxed{\\pi}", C),
    ("radical", "2\\pi", "\\boxed{6.283185307}", C),
    ("radical", "\\frac{\\pi}{2}", "\\boxed{\\pi/2}", C),
    ("radical", "\\frac{\\pi}{2}", "\\boxed{\\frac{\\pi}{3}}", W),
    ("radical", "\\infty", "\\boxed{\\infty}", C),
    ("radical", "\\infty", "\\boxed{-\\infty}", W),
    ("radical", "e^2", "\\boxed{e^{2}}", C),
    ("radical", "\\ln 2", "\\boxed{\\ln(2)}", C),
    ("radical", "\\binom{5}{2}", "\\boxed{10}", C),
    ("radical", "5!", "\\boxed{120}", C),
    ("radical", "6", "\\boxed{2 \\cdot 3}", C),
    ("radical", "6", "\\boxed{2 \\times 3}", C),
    ("radical", "3", "\\boxed{\\sqrt[3]{27}}", C),
    ("radical", "3.25", "\\boxed{3\\frac{1}{4}}", C),
    ("radical", "\\frac{1}{x}", "\\boxed{x^{-1}}", C),
    ("radical", "[2, 3]", "\\boxed{\\left[2, 3\\right]}", C),
    # -- algebra ------------------------------------------------------------------------------
    ("algebra", "x+1", "\\boxed{1+x}", C),
    ("algebra", "x^2-1", "\\boxed{(x-1)(x+1)}", C),
    ("algebra", "x^2-1", "\\boxed{(x-1)^2}", W),
    ("algebra", "2x", "\\boxed{x+x}", C),
    ("algebra", "\\frac{x}{2}", "\\boxed{0.5x}", C),
    ("algebra", "x^2", "\\boxed{x**2}", C),
    ("algebra", "x^2", "\\boxed{x^3}", W),
    ("algebra", "\\frac{1}{x+1}", "\\boxed{(x+1)^{-1}}", C),
    ("algebra", "\\sin^2 x + \\cos^2 x", "\\boxed{1}", C),
    ("algebra", "a+b", "\\boxed{a+c}", W),
    ("algebra", "3x+2y", "\\boxed{2y+3x}", C),
    ("algebra", "n(n+1)/2", "\\boxed{\\frac{n^2+n}{2}}", C),
    ("algebra", "t", "\\boxed{x}", W),
    ("algebra", "A", "\\boxed{a}", W),
    # -- percentages, units, degrees ---------------------------------------------------------
    ("percent", "50\\%", "\\boxed{50\\%}", C),
    ("percent", "50\\%", "\\boxed{50}", C),
    ("percent", "50\\%", "\\boxed{0.5}", C),
    ("percent", "50", "\\boxed{50\\%}", C),
    ("percent", "0.5", "\\boxed{50\\%}", C),
    ("percent", "50", "\\boxed{0.5}", W),
    ("percent", "12.5\\%", "\\boxed{12.5}", C),
    ("percent", "50\\%", "\\boxed{5\\%}", W),
    ("units", "12", "\\boxed{12 \\text{ cm}}", C),
    ("units", "12", "\\boxed{12\\,\\mathrm{cm}}", C),
    ("units", "12", "\\boxed{12\\text{ meters}^2}", C),
    ("units", "40", "\\boxed{40\\mbox{ square units}}", C),
    ("units", "12", "\\boxed{13 \\text{ cm}}", W),
    ("units", "5", "\\boxed{5 apples}", C),
    ("degrees", "30^\\circ", "\\boxed{30}", C),
    ("degrees", "30", "\\boxed{30^{\\circ}}", C),
    ("degrees", "30^\\circ", "\\boxed{30°}", C),
    ("degrees", "30^\\circ", "\\boxed{\\frac{\\pi}{6}}", C),
    ("degrees", "30^\\circ", "\\boxed{60^\\circ}", W),
    ("degrees", "\\frac{\\pi}{6}", "\\boxed{30^\\circ}", C),
    # -- plus-minus and multiple answers --------------------------------------------------
    ("pm", "1 \\pm \\sqrt{2}", "\\boxed{1+\\sqrt{2}, 1-\\sqrt{2}}", C),
    ("pm", "1+\\sqrt{2}, 1-\\sqrt{2}", "\\boxed{1 \\pm \\sqrt{2}}", C),
    ("pm", "1 \\pm \\sqrt{2}", "\\boxed{1+\\sqrt{2}}", W),
    ("pm", "\\pm 3", "\\boxed{3, -3}", C),
    ("pm", "\\pm 3", "\\boxed{3}", W),
    ("multi", "2, 3", "\\boxed{3, 2}", C),
    ("multi", "2, 3", "\\boxed{2}", W),
    ("multi", "2, 3", "\\boxed{2, 3, 4}", W),
    ("multi", "2, 3", "\\boxed{x=2 \\text{ or } x=3}", C),
    ("multi", "2, 3", "\\boxed{x = 2, x = 3}", C),
    ("multi", "2, 3", "\\boxed{2 and 3}", C),
    ("multi", "\\sqrt{67}", "\\boxed{\\sqrt{67}, -\\sqrt{85}}", W),
    ("multi", "1, 1, 2", "\\boxed{1, 2, 2}", W),
    ("multi", "2, 3", "so $x = \\boxed{2}$ or $x = \\boxed{3}$.", C),
    ("multi", "2, 3", "The roots are \\boxed{3} and \\boxed{2}.", C),
    ("multi", "2, 3", "First we get \\boxed{2}.\nThen the answer is \\boxed{3}.", W),
    ("multi", "3", "so $x = \\boxed{2}$ or $x = \\boxed{3}$.", C),
    ("multi", "2, 3", "\\boxed{1} \\boxed{2} \\boxed{3}", W),
    ("multi", "2, 3", "We test \\boxed{1}.\nSo $x=\\boxed{2}$ or $x=\\boxed{3}$.", C),
    ("multi", "1000", "$a = \\boxed{5}$, $b = \\boxed{1,000}$", C),
    ("multi", "1 \\pm \\sqrt{2}", "$x = \\boxed{1+\\sqrt{2}}, \\boxed{1-\\sqrt{2}}$", C),
    # -- tuples, intervals, sets ---------------------------------------------------------------
    ("tuple", "(1, 2)", "\\boxed{(1,2)}", C),
    ("tuple", "(1, 2)", "\\boxed{(2,1)}", W),
    ("tuple", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}", C),
    ("tuple", "(3, \\frac{\\pi}{2})", "\\boxed{(3, \\frac{\\pi}{3})}", W),
    ("tuple", "(1, 2, 3)", "\\boxed{(1, 2, 3)}", C),
    ("tuple", "(1, 2, 3)", "\\boxed{(1, 2)}", W),
    ("tuple", "(1,-2)", "\\boxed{\\left(1,-2\\right)}", C),
    ("interval", "(0, 9)", "\\boxed{[0, 9)}", W),
    ("interval", "[0, 9)", "\\boxed{[0, 9)}", C),
    ("interval", "[0, 9)", "\\boxed{[0, 9]}", W),
    ("interval", "(-\\infty, 2]", "\\boxed{(-\\infty, 2]}", C),
    ("interval", "(-\\infty, 2]", "\\boxed{(-\\infty, 2)}", W),
    ("interval", "[1, 100]", "\\boxed{[1,100]}", C),
    ("interval", "(-\\infty, 0) \\cup (1, \\infty)", "\\boxed{(1,\\infty)\\cup(-\\infty,0)}", C),
    ("interval", "(-\\infty, 0) \\cup (1, \\infty)", "\\boxed{(-\\infty,0)}", W),
    ("interval", "x > 2", "\\boxed{(2, \\infty)}", C),
    ("interval", "x \\ge 2", "\\boxed{(2, \\infty)}", W),
    ("interval", "x \\ge 2", "\\boxed{[2, \\infty)}", C),
    ("interval", "1 < x \\le 3", "\\boxed{(1, 3]}", C),
    ("interval", "(2, \\infty)", "\\boxed{x > 2}", W),
    ("interval", "[-2, 5]", "\\boxed{x \\in [-2, 5]}", C),
    ("set", "\\{1, 2\\}", "\\boxed{\\{2, 1\\}}", C),
    ("set", "\\{1, 2\\}", "\\boxed{\\{1, 3\\}}", W),
    ("set", "\\{1, 2\\}", "\\boxed{1, 2}", C),
    ("set", "\\{1, 2, 3\\}", "\\boxed{\\{1, 2\\}}", W),
    # -- matrices ------------------------------------------------------------------------------
    ("matrix", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
     "\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}", C),
    ("matrix", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
     "\\boxed{\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}}", C),
    ("matrix", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
     "\\boxed{\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}}", W),
    ("matrix", "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}",
     "\\boxed{\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}}", C),
    ("matrix", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{(1, 2)}", C),
    ("matrix", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{(2, 1)}", W),
    ("matrix", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
     "\\boxed{\\begin{pmatrix}1&2&3&4\\end{pmatrix}}", W),
    # -- equations and inequalities ----------------------------------------------------------
    ("relation", "2", "\\boxed{x=2}", C),
    ("relation", "x=2", "\\boxed{2}", C),
    ("relation", "k=1", "\\boxed{1}", C),
    ("relation", "2", "\\boxed{x=3}", W),
    ("relation", "0", "\\boxed{a+3z=0}", W),
    ("relation", "a+3z=0", "\\boxed{0}", W),
    ("relation", "y=2x+1", "\\boxed{2x+1=y}", C),
    ("relation", "y=2x+1", "\\boxed{y=1+2x}", C),
    ("relation", "y=2x+1", "\\boxed{y=2x-1}", W),
    ("relation", "y = 2x + 1", "\\boxed{y - 2x - 1 = 0}", C),
    ("relation", "x + y = 5", "\\boxed{x - y = 5}", W),
    ("relation", "a < b", "\\boxed{b > a}", C),
    ("relation", "a < b", "\\boxed{a > b}", W),
    ("relation", "a < b", "\\boxed{a \\le b}", W),
    ("relation", "x \\le 3", "\\boxed{3 \\geq x}", C),
    ("relation", "f(3) = 5", "\\boxed{5}", C),
    ("relation", "x = 5", "\\boxed{x = 2 + 3 = 5}", C),
    ("relation", "2", "\\boxed{y = 2}", C),
    # -- ratios and clock times: term by term, never a quotient (12:00 is not 12/0) --------
    ("ratio", "12:00", "\\boxed{1:00}", W),
    ("ratio", "1:00", "\\boxed{12:00}", W),
    ("ratio", "12:00", "The train leaves at \\boxed{12:00}.", C),
    ("ratio", "2:00", "\\boxed{14:00}", W),
    ("ratio", "3:2", "\\boxed{3 : 2}", C),
    ("ratio", "3:2", "\\boxed{2:3}", W),
    ("ratio", "1:0", "\\boxed{2:0}", W),
    ("ratio", "1:2", "\\boxed{2:4}", W),  # term by term, never reduced (2:00 is not 1:00)
    ("ratio", "\\frac{1}{0}", "\\boxed{\\frac{2}{0}}", W),  # no value equals a division by 0
    # -- answer phrase without a colon, then display or inline math ---------------------
    ("phrase", "7", "Answer \\[ 7 \\]", C),
    ("phrase", "7", "Answer $ 7 $", C),
    ("phrase", "12", "Final answer \\( 5+7 \\)", C),
    ("phrase", "7", "Answer \\[\n 7\n\\]", C),  # display math may run over lines
    ("phrase", "7", "Answer $$\n7\n$$", C),
    ("phrase", "7", "Answer $\n7\n$", N),  # inline math closes on its own line
    ("phrase", "7", "Answer \\[ 8 \\]", W),
    ("phrase", "7", "The answer is $$\n 7 \n$$ as computed.", C),
    ("phrase", "7", "Final Answer: The final answer is $7$. I hope it is correct.", C),
    ("phrase", "7", "Final Answer: The final answer is $8$. I hope it is correct.", W),
    ("phrase", "34", "Final Answer: The largest $n$ is 34.", C),
    ("phrase", "34", "Final Answer: The largest $n$ is 35.", W),
    ("phrase", "2", "We get $\\boxed{3}$ at first.\nFinal Answer: The final answer is $2$.", C),
    ("phrase", "3", "We get $\\boxed{3}$ at first.\nFinal Answer: The final answer is $2$.", W),
    ("phrase", "3", "So $x = \\boxed{3}$.\nThe final answer is as above.", C),  # prose: box stays
    ("phrase", "105", "La réponse est $105$.", C),
    ("phrase", "105", "La respuesta es $105$.", C),
    ("phrase", "105", "Die Antwort ist 105.", C),
    ("phrase", "105", "答案是 $105$", C),
    ("phrase", "105", "réponse est (35 + 70 = 105).", C),  # a true numeric chain gives its value
    ("phrase", "105", "réponse est (35 + 70 = 106).", W),  # a false one gives nothing
    ("phrase", "1", "so $x+y = 1000$ therefore answer is $1$", C),
    ("phrase", "220", "Réponse: Janeth aura encore 220 $ à payer.", W),  # a number in prose
    # -- a relation or object in a short final sentence -----------------------------------
    ("sentence", "x < 3", "We find that $x \\lt 3$.", C),
    ("sentence", "x < 3", "We find that $x \\gt 3$.", W),
    ("sentence", "x \\ge 5", "Therefore $x \\geq 5$ is the solution.", C),
    ("sentence", "x \\ge 5", "Therefore $x > 5$ is the solution.", W),
    ("sentence", "x \\le 2", "Thus $x <= 2$ is our answer.", C),
    ("sentence", "x \\neq 5", "The solution is $x != 5$", C),
    ("sentence", "x \\neq 5", "The solution is $x = 5$", W),
    ("sentence", "x > 5", "Therefore $x \\gt 5$.", C),
    ("sentence", "3", "We have $x = 3$ and therefore the final answer", N),  # cut off
    ("sentence", "3", "First $x = 2$. Then we check $x = 3$.", N),  # not a conclusion
    ("sentence", "3", "Hence $x = 2$ or $x = 3$.", W),  # two spans: read whole, no value
    ("sentence", "3", "She pays $3 and gets $2 back.", N),  # dollar signs, not math
    ("sentence", "4", "Let's compute $2+2$.", N),  # commits to no answer
    ("sentence", "4", "Here is the result: $4$", C),
    # -- matrices in prose, sums and products of matrices -------------------------------
    ("matrix", "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}",
     "The identity matrix is $\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$.", C),
    ("matrix", "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}",
     "So we get: $\\left[\\begin{array}{cc}1 & 2 \\\\ 3 & 4\\end{array}\\right]$", C),
    ("matrix", "\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}",
     "The sum is $\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + "
     "\\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}$", C),
    ("matrix", "\\begin{pmatrix}6 & 8 \\\\ 10 & 13\\end{pmatrix}",
     "The sum is $\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + "
     "\\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}$", W),
    ("matrix", "\\begin{pmatrix}19 & 22 \\\\ 43 & 50\\end{pmatrix}",
     "\\boxed{\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}\\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}}", C),
    ("matrix", "\\begin{pmatrix}23 & 34 \\\\ 31 & 46\\end{pmatrix}",  # B A, not A B
     "\\boxed{\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}\\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}}", W),
    ("matrix", "\\begin{pmatrix}1 \\\\ 2\\end{pmatrix}",
     "\\boxed{\\begin{pmatrix}1 & 2\\end{pmatrix}\\begin{pmatrix}1 & 2\\end{pmatrix}}", W),  # shapes
    # -- labelled answers --------------------------------------------------------------
    ("label", "(p,q)=(3,2)", "\\boxed{(3,2)}", C),
    ("label", "(p,q)=(3,2)", "\\boxed{(2,3)}", W),
    ("label", "AB=4,CD=5", "\\boxed{4, 5}", C),
    ("label", "AB=4,CD=5", "\\boxed{5, 4}", W),  # distinct labels keep their order
    ("label", "x_1=2, x_2=3", "\\boxed{3, 2}", C),  # roots x_1, x_2 in either order
    ("label", "V_1:V_2=11:21", "\\boxed{11:21}", C),
    ("label", "V_1:V_2=11:21", "\\boxed{21:11}", W),
    ("label", "|AB|=1", "\\boxed{1}", C),
    ("label", "\\frac{NO}{BO}=\\frac{1}{\\sqrt6}", "\\boxed{\\frac1{\\sqrt6}}", C),
    ("label", "\\frac{NO}{BO}=\\frac{1}{\\sqrt6}", "\\boxed{\\sqrt6}", W),
    ("label", "xy=6", "\\boxed{6}", W),  # xy = 6 is a curve, not a value
    ("label", "x \\cdot y = 6", "\\boxed{6}", W),  # lowercase products are no label
    ("label", "x+y=5", "\\boxed{5}", W),  # a sum is no label
    ("label", "(5, 8), (8, 5)", "\\boxed{(x, y) = (5, 8) \\text{ and } (8, 5)}", C),
    # -- equations equal up to scaling and rearrangement -------------------------------
    ("equation", "2x+4y-3=0", "\\boxed{y=-\\frac12x+\\frac34}", C),
    ("equation", "2x+4y-3=0", "\\boxed{y=-\\frac12x+\\frac32}", W),
    ("equation", "\\frac{x^2}{4}+\\frac{y^2}{3}=1", "\\boxed{\\frac{x^2}{16}+\\frac{y^2}{12}=\\frac14}", C),
    ("equation", "\\frac{x^2}{4}+\\frac{y^2}{3}=1", "\\boxed{\\frac{x^2}{16}+\\frac{y^2}{12}=1}", W),
    ("equation", "34x+45y-20z+100=0", "\\boxed{-34x-45y+20z-100=0}", C),
    ("equation", "x < 2y", "\\boxed{2x < 4y}", C),
    ("equation", "x < 2y", "\\boxed{-2x < -4y}", W),  # a negative factor flips an inequality
    ("equation", "y = x^2", "\\boxed{y = 2x^2}", W),  # not a constant multiple of lhs - rhs
    # -- inequality chains vs intervals ------------------------------------------------
    ("chain", "-2 \\le x \\le 7", "\\boxed{x \\in [-2,7]}", C),
    ("chain", "-2 \\le x \\le 7", "\\boxed{x \\in (-2,7]}", W),
    ("chain", "0<f(x)<1", "\\boxed{(0,1)}", C),
    ("chain", "0<f(x)<1", "\\boxed{[0,1)}", W),
    ("chain", "1\\leq|z|\\leq \\frac32",
     "\\boxed{z \\in \\left[-\\frac{3}{2}, -1\\right] \\cup \\left[1, \\frac{3}{2}\\right]}", C),
    ("chain", "1\\leq|z|\\leq \\frac32", "\\boxed{z \\in \\left[1, \\frac{3}{2}\\right]}", W),
    ("chain", "x \\in [-2,7]", "\\boxed{-2 \\le x \\le 7}", W),  # a gold interval wants one
    # -- separators, units, several boxes, tuples of tuples ------------------------------
    ("format", "11111111100", "is $\\boxed{11,\\! 111,\\! 111,\\! 100}$", C),
    ("format", "32349", "\\boxed{32,\\! 349}", C),
    ("format", "32349", "\\boxed{32,\\! 348}", W),
    ("format", "14916", "The final answer is $14{, }916$.", C),
    ("format", "125", "The distance is $\\boxed{125\\textnormal{ miles}}$.", C),
    ("format", "1, 2", "$\\boxed{1}\\boxed{2}$", C),
    ("format", "\\boxed{1}\\boxed{2}", "$\\boxed{1,2}$", C),  # a gold with several boxes
    ("format", "\\boxed{1} papers and \\boxed{2} bins", "$\\boxed{1,2}$", C),
    ("format", "\\boxed{1} no no no no no \\boxed{2}", "$\\boxed{1,2}$", W),  # not list glue
    ("format", "$$\\boxed{2}, \\boxed{3}, \\boxed{5}$$", "\\boxed{\\{2, 3, 5\\}}", C),
    ("format", "(37,3,3,13),(17,3,3,7),(3,3,2,3)", "\\boxed{(3, 3, 2, 3), (17,3,3,7), (37, 3, 3, 13)}", C),
    ("format", "(37,3,3,13),(17,3,3,7),(3,3,2,3)",
     "\\boxed{(3, 3, 2, 3), (17,3,3,7), (17, 3, 3, 7), (37, 3, 3, 13)}", C),  # listed twice
    ("format", "(37,3,3,13),(17,3,3,7),(3,3,2,3)", "\\boxed{(3, 3, 2, 3), (17,3,3,7)}", W),
    ("format", "(0;0;0),(0;-2;0)", "\\boxed{(0, -2, 0), (0, 0, 0)}", C),
    ("format", "(11,7)or(7,11)", "\\boxed{(7,11),\\ (11,7)}", C),
    ("format", "-12;-11;-10", "\\boxed{\\{-12, -11, -10\\}}", C),
    ("format", "\\frac{9.5}{3.14159}", "$\\boxed{\\frac{9.5}{3.14159} \\approx 3.01}$", C),
    ("format", "11", "$\\boxed{x \\approx 11}$", C),
    ("format", "C", "\\boxed{C. x = 42}", C),  # a choice letter with its text
    ("format", "185", "\\boxed{185\\\\}", C),  # a trailing line break inside the box
    ("format", "1000.99", "\\boxed{1000,99}", W),  # decimal comma: read as a list (see README)
    # -- whole worked solutions as the reference ------------------------------------------
    ("gold", "We have $a = 2$, so the final answer is $a + 1 = 3$... Final Answer: The final "
     "answer is $3$. I hope it is correct.", "\\boxed{3}", C),
    ("gold", "We have $a = 2$, so the final answer is $a + 1 = 3$... Final Answer: The final "
     "answer is $3$. I hope it is correct.", "\\boxed{2}", W),
    ("gold", "Then $(n - 1)(n + 2) = 0,$ so the solutions are $n = \\boxed{1,-2}.$",
     "Thus the integers are: \\[ \\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}. \\]", C),
    ("gold", "Then $(n - 1)(n + 2) = 0,$ so the solutions are $n = \\boxed{1,-2}.$",
     "Thus the integers are: \\[ \\boxed{-2} \\]", W),
    # -- words ---------------------------------------------------------------------------------
    ("text", "\\text{Monday}", "\\boxed{\\text{monday}}", C),
    ("text", "\\text{Monday}", "\\boxed{Monday}", C),
    ("text", "\\text{Monday}", "\\boxed{Tuesday}", W),
    ("text", "\\text{(A)}", "\\boxed{A}", C),
    ("text", "\\text{(A)}", "\\boxed{B}", W),
    ("text", "\\text{even}", "\\boxed{\\text{odd}}", W),
    ("text", "\\text{no}", "\\boxed{\\text{on}}", W),
    # -- more model-style outputs ----------------------------------------------------------
    ("model", "3", "<think>Maybe 4? No: 1+2 = 3.</think>\nThe answer is $\\boxed{3}$.", C),
    ("model", "3", "<think>Maybe 3? No: 2+2 = 4.</think>\nThe answer is $\\boxed{4}$.", W),
    ("model", "\\frac{1}{2}",
     "So $P = \\boxed{1/2}$.\n\nWait, I double counted. Actually $P = \\boxed{1/3}$.", W),
    ("model", "4", "$$\n\\boxed{4}\n$$", C),
    ("model", "-2", "\\[ \\boxed{- 2} \\]", C),
    ("model", "18", "She makes $\\boxed{\\$18.00}$ every day.", C),
    ("model", "18", "She makes $\\boxed{\\$18.50}$ every day.", W),
    ("model", "\\frac{3}{4}", "We need \\boxed{\\dfrac{3}{4}\\text{ cups}} of flour.", C),
    ("model", "x \\in (-\\infty, 2)", "The solution set is $\\boxed{(-\\infty, 2)}$.", C),
    ("model", "x \\in (-\\infty, 2)", "The solution set is $\\boxed{(-\\infty, 2]}$.", W),
    ("model", "1", "\\boxed{\\sin^2\\theta + \\cos^2\\theta}", C),
    ("model", "6", "There are $\\boxed{3!}$ orderings.", C),
    ("model", "e", "\\boxed{2.718281828}", C),
    ("model", "100", "\\boxed{10^2}", C),
    ("model", "\\sqrt{3}", "\\boxed{3^{1/2}}", C),
    ("model", "2", "\\boxed{2x}", W),
    ("model", "\\frac{1}{2}", "\\boxed{\\frac{1}{2}x}", W),
    ("model", "\\text{(B)}", "The correct option is \\boxed{\\text{(B)}}.", C),
    ("model", "\\text{(B)}", "The correct option is \\boxed{\\text{(C)}}.", W),
    ("model", "12", "Thus, the total is \\(\\boxed{12}\\) apples. Let me know if you need more!", C),
    # -- hostile and injected text ----------------------------------------------------------
    ("hostile", "3", "\\boxed{__import__('os').system('echo pwned')}", W),
    ("hostile", "3", "\\boxed{eval('1+2')}", W),
    ("hostile", "3", "\\boxed{().__class__.__bases__[0].__subclasses__()}", W),
    ("hostile", "3", "\\boxed{lambda: 3}", W),
    ("hostile", "3", "\\boxed{3 or 4 or 5}", W),
    ("hostile", "3", "\\boxed{x}", W),
    ("hostile", "3", "\\boxed{3, 4, 5, 6, 7}", W),
    ("hostile", "3", "\\boxed{[1, 5]}", W),
    ("hostile", "3", "\\boxed{\\text{any number}}", W),
    # near misses an outside red team found accepted (each was "correct" before)
    ("units", "5", "Answer: 5 is not correct", W),
    ("units", "5", "The answer is 5 or maybe 6", W),
    ("units", "7", "The final answer is 7 km per hour", C),  # real units still go
    ("units", "12", "The answer is 12 dollars.", C),
    ("extract", "10", "Suppose the answer is 10. Then Tom has 2 left, so Tom has 8.", N),
    ("extract", "4", "Assume that the answer is 3. Then we check it. The answer is 4.", C),
    ("extract", "3", "Assume that the answer is 3. Then we check it. The answer is 4.", W),
    ("extract", "7", "If we add them, the answer is 7.", C),
    ("fraction", "21/2", "The answer is 2 1/2", W),
    ("fraction", "5/2", "The answer is 2 1/2", C),
    ("fraction", "-5/2", "The answer is -2 1/2", C),
    # scientific notation is the number it writes, to the digits it shows; no absolute floor
    ("number", "2000001", "The answer is $\\boxed{2e6}$", W),
    ("number", "2000000", "The answer is $\\boxed{2e6}$", C),
    ("number", "2000001", "The answer is $2.000000 \\times 10^6$", W),
    ("number", "2000001", "The answer is $2.000001 \\times 10^6$", C),
    ("number", "2500000", "The answer is $2.5 \\times 10^{6}$", C),
    ("number", "0", "The answer is $\\boxed{1e-30}$", W),
    ("number", "0", "The answer is $\\boxed{1.0 \\times 10^{-30}}$", W),
    ("number", "1e-30", "$\\boxed{0}$", W),
    ("number", "0", "$\\boxed{0.000001}$", W),
    ("number", "0", "$\\boxed{0.1^{30}}$", W),  # a float near 0 is not 0 (no absolute floor)
    ("number", "0.00003", "The answer is 3e-5", C),
    ("number", "3 \\times 10^{-5}", "The answer is 0.00003", C),
    ("number", "6.02 \\times 10^{23}", "$\\boxed{6.02e23}$", C),
    # a matrix is not the flat tuple of its cells; a column or row vector is its tuple
    ("matrix", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "The answer is $(1,2,3,4)$", W),
    ("matrix", "(1,2,3,4)", "$\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}$", W),
    ("matrix", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", "The answer is $(1,2)$", C),
    # a false chain gives nothing
    ("relation", "5", "The answer is $x = 2+2 = 5$", W),
    ("relation", "4", "The answer is $x = 2+2 = 5$", W),
    ("relation", "4", "The answer is $x = 2+2 = 4$", C),
    ("relation", "1.5", "So the answer is $x = 3/2 = 1.5$", C),
    # the words read as the signs do, both ways
    ("percent", "0.5", "The answer is 50 percent.", C),
    ("percent", "50", "The answer is 50 percent.", C),
    ("percent", "0.5", "The answer is 50%.", C),
    ("percent", "50", "The answer is 0.5.", W),
    ("degrees", "\\frac{\\pi}{2}", "The answer is 90 degrees.", C),
    ("degrees", "\\frac{\\pi}{2}", "The answer is $\\boxed{90}$.", W),
    ("degrees", "90^\\circ", "The answer is $\\boxed{90}$.", C),
    ("degrees", "90", "The answer is $\\boxed{90^\\circ}$.", C),
]

RESPONSES = {"long", "several", "truncated"}


@pytest.fixture(scope="module")
def verifier():
    return MathVerifier(timeout_s=10.0)


@pytest.fixture(scope="module")
def verdicts(verifier):
    return verifier.verify_batch([c[2] for c in CASES], [c[1] for c in CASES])


def test_table_is_big_and_covers_the_families():
    assert len(CASES) >= 150
    families = {c[0] for c in CASES}
    for fam in ("extract", "number", "fraction", "radical", "algebra", "percent", "units",
                "degrees", "pm", "multi", "tuple", "interval", "set", "matrix", "relation",
                "text", "hostile"):
        assert fam in families


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_regression_case(index, verdicts):
    family, reference, response, expected = CASES[index]
    v = verdicts[index]
    assert v.status == expected, (family, reference, response[-80:], v)
    assert v.reward == (1.0 if expected == C else 0.0)


def test_zero_false_positives(verdicts):
    false_pos = [c for c, v in zip(CASES, verdicts) if v.correct and c[3] != C]
    assert false_pos == []


def test_batch_equals_one_by_one(verifier, verdicts):
    for case, batch_v in list(zip(CASES, verdicts))[::7]:
        assert verifier.verify(case[2], case[1]) == batch_v


# the shared data copy beside the checkout (../shared/data); the tests below skip without it
MATH500 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "math500" / "test.jsonl"


@pytest.mark.skipif(not MATH500.exists(), reason="MATH-500 copy not available")
def test_math500_gold_solutions_verify(verifier):
    """Every MATH-500 reference solution verifies against its answer (gold self-check)."""
    rows = [json.loads(line) for line in MATH500.read_text().splitlines()]
    verdicts = verifier.verify_batch([r["solution"] for r in rows], [r["answer"] for r in rows])
    assert [v.status for v in verdicts].count("correct") == len(rows)


@pytest.mark.skipif(not MATH500.exists(), reason="MATH-500 copy not available")
def test_math500_shifted_answers_are_rejected(verifier):
    """Pairing each solution with the next problem's answer is wrong unless the answers agree."""
    rows = [json.loads(line) for line in MATH500.read_text().splitlines()][:200]
    golds = [rows[(i + 1) % len(rows)]["answer"] for i in range(len(rows))]
    verdicts = verifier.verify_batch([r["solution"] for r in rows], golds)
    hits = [(g, r["answer"]) for g, r, v in zip(golds, rows, verdicts) if v.correct]
    assert all(_same_value(g, a) for g, a in hits), hits
    assert all(v.status in ("correct", "incorrect") for v in verdicts)


@pytest.mark.skipif(not MATH500.exists(), reason="MATH-500 copy not available")
def test_math500_worked_solution_as_the_reference(verifier):
    """A whole MATH-style solution as the gold: its own final answer is read with the same
    rules, so the boxed answer verifies against it, and the next problem's answer does not
    (unless the two answers are equal)."""
    rows = [json.loads(line) for line in MATH500.read_text().splitlines()]
    right = verifier.verify_batch([f"\\boxed{{{r['answer']}}}" for r in rows],
                                  [r["solution"] for r in rows])
    assert [(r["answer"], v) for r, v in zip(rows, right) if not v.correct] == []
    shifted = [rows[(i + 1) % len(rows)]["answer"] for i in range(len(rows))][:200]
    wrong = verifier.verify_batch([f"\\boxed{{{a}}}" for a in shifted],
                                  [r["solution"] for r in rows[:200]])
    hits = [(a, r["answer"]) for a, r, v in zip(shifted, rows, wrong) if v.correct]
    assert all(_same_value(a, r) for a, r in hits), hits


def _same_value(gold: str, answer: str) -> bool:
    """Shifted pairs whose answers really are equal (checked by hand)."""
    return (gold, answer) in {("x=5", "5"), ("7", "7"), ("3", "3")} or gold == answer


@pytest.mark.skipif(not MATH500.exists(), reason="MATH-500 copy not available")
def test_math500_references_parse_and_equal_themselves(verifier):
    """Gold self-check through the parser and comparator, not just string equality."""
    from mpo_gym.verifiers.math import check_answer
    from mpo_gym.verifiers.math_extract import normalize

    rows = [json.loads(line) for line in MATH500.read_text().splitlines()]
    args = [(normalize(r["answer"]), normalize(r["answer"])) for r in rows]
    results = verifier.pool.map(check_answer, args, 10.0)
    failures = [(r["answer"], res) for r, res in zip(rows, results)
                if res.status != "ok" or res.value[0] != "correct"]
    assert failures == []


GSM8K = MATH500.parents[1] / "gsm8k" / "test.jsonl"


@pytest.mark.skipif(not (MATH500.exists() and GSM8K.exists()), reason="data copies not available")
def test_percent_and_degree_leniency_as_decided_on_the_data(verifier):
    """The documented decision: GSM8K's 'what percent' golds stated with a % sign, and
    MATH-500's degree golds stated without one, are correct (a strict reading rejects all 28)."""
    gsm = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    golds = [r["answer"].split("####")[-1].strip() for r in gsm if "what percent" in r["question"].lower()]
    math = [json.loads(line)["answer"] for line in MATH500.read_text().splitlines()]
    degrees = [a for a in math if "^\\circ" in a]
    assert (len(golds), len(degrees)) == (14, 14)
    responses = [f"So the answer is {g}%." for g in golds]
    responses += ["The angle is $\\boxed{" + a.replace("^\\circ", "") + "}$." for a in degrees]
    verdicts = verifier.verify_batch(responses, golds + degrees)
    assert [v.status for v in verdicts] == ["correct"] * 28
    # the signs still mean something: 60% is not 6, and 90 without a sign is not pi/2
    assert not verifier.verify("So the answer is 60%.", "6").correct
    assert not verifier.verify("The angle is $\\boxed{90}$.", "\\frac{\\pi}{2}").correct
