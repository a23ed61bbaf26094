"""The code stays readable. Every function in cifarkit/ fits on a screen (at most 90
lines: one whole idea, such as the epoch loop with its batch loop, rather than pieces a
reader must chase) and takes at most 7 parameters, as in the small codebases the kit takes
as models; each script opens on its CONFIGS, defines its own model class and imports no
other script. Counted with ast; a failure lists each function over, with its size."""
import ast

from conftest import REPO

MAX_LINES, MAX_PARAMETERS = 90, 7


def functions():
    """(file:line name, lines, parameters) of every function and method in cifarkit/."""
    for path in sorted((REPO / "cifarkit").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                named = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
                parameters = len([arg for arg in named if arg.arg not in ("self", "cls")])
                parameters += bool(arguments.vararg) + bool(arguments.kwarg)
                yield (f"{path.name}:{node.lineno} {node.name}",
                       node.end_lineno - node.lineno + 1, parameters)


def test_every_function_is_short_and_takes_few_parameters():
    found = list(functions())
    assert len(found) > 50  # the walk saw the engine
    too_long = [f"{where}: {lines} lines" for where, lines, _ in found if lines > MAX_LINES]
    too_many = [f"{where}: {count} parameters" for where, _, count in found
                if count > MAX_PARAMETERS]
    assert not too_long + too_many, "\n".join(too_long + too_many)


def test_each_script_defines_its_own_model_and_opens_on_its_configs():
    for name in ("Original_version_model", "Original_version_model_multiGPU",
                 "L2_regularization", "Dropout_regularization", "Resnet_model"):
        tree = ast.parse((REPO / f"{name}.py").read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert not imported & {"Original_version_model", "Original_version_model_multiGPU",
                               "L2_regularization", "Dropout_regularization", "Resnet_model"}
        first = next(node for node in tree.body
                     if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)))
        assert isinstance(first, ast.Assign) and first.targets[0].id == "CONFIGS", name
        assert any(isinstance(node, ast.ClassDef) for node in tree.body), name
