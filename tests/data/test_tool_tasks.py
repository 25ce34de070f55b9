"""research/data/tasks/tool_tasks.py: large-number arithmetic and list problems, with the program a tool runs."""

import ast
import random

from research.data.tasks import generate_problems
from research.data.tasks.tool_tasks import DIFFICULTIES, KINDS, make_problem
from research.rl.verifiers import problem_score


def evaluated(program: str) -> int:
    """The value the one-line program prints, computed without running it: its argument, read as a literal
    expression of sums, products and sorted-slices (checked node by node)."""
    call = ast.parse(program, mode="eval").body
    assert isinstance(call, ast.Call) and call.func.id == "print" and len(call.args) == 1
    allowed = (ast.Expression, ast.BinOp, ast.Add, ast.Mult, ast.Constant, ast.Call, ast.Name, ast.Load,
               ast.List, ast.Subscript, ast.Slice, ast.UnaryOp, ast.USub)
    expression = ast.Expression(call.args[0])
    assert all(isinstance(node, allowed) for node in ast.walk(expression))
    assert {node.id for node in ast.walk(expression) if isinstance(node, ast.Name)} <= {"sum", "sorted"}
    return eval(compile(expression, "program", "eval"), {"__builtins__": {}, "sum": sum, "sorted": sorted})


def test_every_kind_and_level_prints_its_answer_from_numbers_of_its_digits():
    rng = random.Random(0)
    kinds = set()
    for index in range(60):
        difficulty = rng.choice(DIFFICULTIES["train"] + DIFFICULTIES["held_out"])
        problem = make_problem(rng, difficulty, f"tool_tasks/train/0/{index}")
        program = problem.inputs["program"]
        assert evaluated(program) == int(problem.answer)
        kinds.add("largest" if "sorted" in program else "product" if "*" in program else "sum")
        operands = [node.value for node in ast.walk(ast.parse(program)) if isinstance(node, ast.Constant)]
        numbers = operands[:-1] if "sorted" in program else operands  # the last constant is the slice's k
        assert numbers and all(len(str(number)) == difficulty for number in numbers)
        assert all(str(number) in problem.prompt for number in numbers)
    assert kinds == set(KINDS)


def test_the_verifier_accepts_the_answer_and_rejects_a_neighbour():
    for problem in generate_problems("tool_tasks", "held_out", 5, seed=0):
        assert problem_score(problem, problem.answer).correct
        assert not problem_score(problem, str(int(problem.answer) + 1)).correct
        assert problem.difficulty in DIFFICULTIES["held_out"]
