"""tokensafe.methods: the method registry that method modules fill, its names, and the light import it promises."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tokensafe.train as train
from tokensafe import methods
from tokensafe.methods import METHOD_NAMES, METHODS, MethodSetup, register_method, resolve_method, setup_sft

EXPECTED_MODULES = {
    "sft": "tokensafe.methods",
    "toss": "tokensafe.toss.method",
    "pact": "tokensafe.pact.method",
    "kl": "tokensafe.pact.method",
    "toss_pact": "tokensafe.toss_pact",
    "constrained_sft": "tokensafe.baselines.constrained_sft",
    "safelora": "tokensafe.baselines.safelora",
    "asft": "tokensafe.baselines.asft",
    "safeinstr": "tokensafe.baselines.safeinstr",
    "sample_random": "tokensafe.baselines.sample_selection",
    "sample_score": "tokensafe.baselines.sample_selection",
}


def test_importing_train_registers_exactly_the_builtin_methods():
    assert sorted(METHODS) == sorted(METHOD_NAMES) == sorted(EXPECTED_MODULES)
    assert {name: setup.__module__ for name, setup in METHODS.items()} == EXPECTED_MODULES
    assert all(resolve_method(name) is METHODS[name] for name in METHOD_NAMES)
    # The old names stay importable from tokensafe.train and are the same objects.
    assert train.METHODS is METHODS and train.MethodSetup is MethodSetup
    assert train.resolve_method is resolve_method and train.setup_sft is setup_sft


def test_register_and_resolve_errors(monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(METHODS))  # keep the real registry untouched

    def setup_other(cfg, model, tokenizer, dataset):  # noqa: ANN001
        return MethodSetup(model=model, dataset=dataset)

    taken = r"^method 'toss' is already registered by tokensafe\.toss\.method\.setup_toss$"
    with pytest.raises(ValueError, match=taken):
        register_method("toss")(setup_other)
    assert register_method("toss")(methods.METHODS["toss"]) is methods.METHODS["toss"]  # the same one again is fine
    assert register_method("other")(setup_other) is setup_other and methods.resolve_method("other") is setup_other
    with pytest.raises(ValueError, match=r"^unknown method 'nope'; available: asft, constrained_sft, kl, other, "):
        methods.resolve_method("nope")


def test_sft_setup_passes_model_and_data_through():
    model, dataset = object(), object()
    setup = setup_sft(None, model, None, dataset)
    assert setup.model is model and setup.dataset is dataset and setup.loss_terms == [] and setup.post_train is None


def test_methods_module_and_cli_help_do_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "import tokensafe.methods\n"
        "from tokensafe.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
