"""The user's own model, named ``package.module:factory`` in place of a registered family.

The module is imported from ``sys.path`` plus the current directory: the ``bmrs`` console script
puts its own ``bin`` folder, not the directory it is run from, on ``sys.path``, and "a ``.py`` file
next to ``flows.yaml``" is where users keep such a factory. The current directory stays on the path
while the factory runs, so imports it makes lazily resolve the same way.

The factory is called with ``input_shape=(C, H, W)`` and ``num_classes=K`` for those of the two
keywords it accepts (both, one, or neither), and must return an ``nn.Module`` mapping a batch of
the dataset's images to ``(batch, K)`` logits; that is checked once on a zero batch so a mismatch
surfaces here, by name, rather than as an index error deep in training. Whatever goes wrong in
calling the factory (a builtin such as ``math:sqrt`` named by mistake, the user's code raising) is
reported as one ``ValueError`` or ``TypeError`` naming the spec and the fix.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from typing import Callable, Iterator

import torch
from torch import nn

FACTORY_KEYWORDS = ("input_shape", "num_classes")
_FORM = "package.module:factory (e.g. mymodels:make_net for make_net in ./mymodels.py)"


def is_user_model(name: str) -> bool:
    return ":" in name


@contextlib.contextmanager
def _current_directory_on_path() -> Iterator[None]:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _split(spec: str) -> tuple[str, list[str]]:
    module_name, _, attribute = spec.partition(":")
    parts = module_name.split(".") + attribute.split(".")
    if not module_name or not attribute or not all(part.isidentifier() for part in parts):
        raise ValueError(f"model {spec!r} is not of the form {_FORM}")
    return module_name, attribute.split(".")


def _import(spec: str, module_name: str) -> object:
    importlib.invalidate_caches()  # a module written after start-up (a notebook, a test) must be found
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ValueError(
                f"model {spec!r}: no module {missing!r} on the Python path or in the current directory "
                f"{os.getcwd()!r}; run from the folder holding {missing.replace('.', '/')}.py or add its folder "
                "to PYTHONPATH"
            ) from error
        raise ValueError(f"model {spec!r}: importing {module_name!r} failed: {error}; install what it needs") from error
    except Exception as error:  # the user's module ran and failed: report it as bad input, not a crash
        raise ValueError(
            f"model {spec!r}: importing {module_name!r} raised {type(error).__name__}: {_first_line(error)}; fix the module"
        ) from error


def resolve_factory(spec: str) -> Callable[..., object]:
    """The callable ``spec`` names; ``ValueError`` naming the fix when it cannot be found."""
    module_name, attributes = _split(spec)
    with _current_directory_on_path():
        target = _import(spec, module_name)
    for depth, attribute in enumerate(attributes):
        if not hasattr(target, attribute):
            owner = ".".join([module_name, *attributes[:depth]])
            public = sorted(n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None)))
            raise ValueError(
                f"model {spec!r}: {owner!r} ({getattr(target, '__file__', None) or type(target).__name__}) has no "
                f"attribute {attribute!r}; its public callables are {public}"
            )
        target = getattr(target, attribute)
    if not callable(target):
        raise TypeError(f"model {spec!r}: {'.'.join(attributes)!r} is a {type(target).__name__}, not a callable factory")
    return target


def _factory_arguments(spec: str, factory: Callable[..., object], values: dict[str, object]) -> dict[str, object]:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature: call with nothing
        return {}
    kinds = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    arguments = {k: v for k, v in values.items() if takes_any or (k in parameters and parameters[k].kind in kinds)}
    required = [
        name for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in arguments
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]  # fmt: skip
    if required:
        raise TypeError(
            f"model {spec!r}: the factory requires {required}, but only {list(FACTORY_KEYWORDS)} are passed "
            "(as keywords); give the other parameters defaults, or name a factory that builds your "
            "torch.nn.Module from input_shape and num_classes"
        )
    return arguments


def build_user_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    factory = resolve_factory(spec)
    arguments = _factory_arguments(spec, factory, {"input_shape": tuple(input_shape), "num_classes": num_classes})
    with _current_directory_on_path():
        try:
            model = factory(**arguments)
        except Exception as error:  # the user's code (or a callable named by mistake) failed: bad input, not a crash
            raise ValueError(
                f"model {spec!r}: calling the factory with {sorted(arguments) or 'no arguments'} raised "
                f"{type(error).__name__}: {_first_line(error)}; fix the factory, or name one that builds a "
                "torch.nn.Module from input_shape and num_classes"
            ) from error
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model {spec!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module; return the model"
        )
    _check_output(spec, model, tuple(input_shape), num_classes)
    return model


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _check_output(spec: str, model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    was_training = model.training
    model.eval()  # no batch-norm statistics are updated by this probe
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *input_shape))
    except Exception as error:  # any failure of the user's forward is a model/data mismatch to report
        raise ValueError(
            f"model {spec!r} fails on a batch of the dataset's images shaped (2, {', '.join(map(str, input_shape))}): "
            f"{type(error).__name__}: {_first_line(error)}; make it accept input_shape={input_shape}"
        ) from error
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, num_classes):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"model {spec!r} maps a batch of 2 images to {shape}; it must return logits shaped (batch, {num_classes}) "
            f"for this dataset's {num_classes} classes (use the num_classes argument)"
        )
