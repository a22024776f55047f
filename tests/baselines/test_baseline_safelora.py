"""SafeLoRA: the thin projection equals the explicit C = V Vᵀ/‖V‖_F, cosines, layer selection, the command, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tokensafe.baselines.config import SafeLoraArgs
from tokensafe.baselines.directions import AdapterError, AlignmentPair, adapter_lora_factors, lora_modules, project
from tokensafe.baselines.safelora import layer_cosine, project_model, select_layers
from tokensafe.cli import main
from tokensafe.testing import tiny_llama


def explicit_c(v: torch.Tensor) -> torch.Tensor:
    return v @ v.T / torch.linalg.matrix_norm(v, "fro")


def explicit_cosine(c, b, a) -> float:
    x, y = (c @ b @ a).flatten().double(), (b @ a).flatten().double()
    return float(x @ y / (x.norm() * y.norm()))


def lora_state(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path (without the PEFT prefix) -> (A, B) copies."""
    out = {}
    for name, module in lora_modules(model):
        path = name.removeprefix("base_model.model.")
        out[path] = (
            module.lora_A["default"].weight.detach().clone(),
            module.lora_B["default"].weight.detach().clone(),
        )
    return out


def expected_projection(before, pair_weights, n=None, threshold=None):
    """Brute force: explicit C per layer, cosines, selection, projected B."""
    aligned, base = pair_weights
    cos, proj = {}, {}
    for path, (a, b) in before.items():
        c = explicit_c(aligned[f"{path}.weight"] - base[f"{path}.weight"])
        cos[path], proj[path] = explicit_cosine(c, b, a), c @ b
    names = list(before)
    if n is not None:
        chosen = set(sorted(names, key=lambda k: (cos[k], names.index(k)))[:n])
    else:
        chosen = {k for k in names if cos[k] < threshold}
    return cos, proj, chosen


def test_thin_projection_equals_explicit_c():
    torch.manual_seed(0)
    v, b, a = torch.randn(12, 10), torch.randn(12, 3), torch.randn(3, 10)
    assert torch.allclose(project(v, b), explicit_c(v) @ b, atol=1e-5)
    assert layer_cosine(b, a, project(v, b)) == pytest.approx(explicit_cosine(explicit_c(v), b, a), abs=1e-5)
    # B A = 0: nothing to project, cosine 1 (never selected before a trained layer)
    assert layer_cosine(torch.zeros(12, 3), a, torch.zeros(12, 3)) == 1.0


def test_select_layers_by_number_and_threshold():
    cosines = [0.9, 0.1, 0.4, 0.1, 0.7, -0.2]
    assert select_layers(cosines, "number", 3, 0.5) == [1, 3, 5]  # ties: the earlier layer first
    assert select_layers(cosines, "number", 0, 0.5) == []
    assert select_layers(cosines, "number", 10, 0.5) == list(range(6))
    assert select_layers(cosines, "threshold", 3, 0.5) == [1, 2, 3, 5]
    with pytest.raises(ValueError, match="safelora_select"):
        select_layers(cosines, "lowest", 3, 0.5)


@pytest.mark.parametrize("mode", ["number", "threshold"])
def test_project_model_matches_brute_force(student, aligned_dir, base_dir, pair_weights, mode):
    before = lora_state(student)
    args = SafeLoraArgs(
        str(aligned_dir), str(base_dir), safelora_select=mode, safelora_layers=2, safelora_threshold=0.75
    )
    report = project_model(student, args)
    cos, proj, chosen = expected_projection(
        before, pair_weights, n=2 if mode == "number" else None, threshold=0.75 if mode == "threshold" else None
    )
    assert 0 < len(chosen) < len(before)  # the test exercises both branches
    after = lora_state(student)
    rows = {row["module"].removeprefix("base_model.model."): row for row in report["layers"]}
    for path, (a, b) in before.items():
        assert rows[path]["cosine"] == pytest.approx(cos[path], abs=1e-5)
        assert rows[path]["projected"] == (path in chosen)
        v = (pair_weights[0][f"{path}.weight"] - pair_weights[1][f"{path}.weight"]).double()
        assert rows[path]["v_norm"] == pytest.approx(torch.linalg.matrix_norm(v, "fro").item(), rel=1e-5)
        eigenvalues = torch.linalg.eigvalsh(explicit_c(v))
        assert rows[path]["lambda_max"] == pytest.approx(eigenvalues.max().item(), rel=1e-4)
        assert torch.equal(after[path][0], a)  # A is never touched
        expected_b = proj[path] if path in chosen else b
        assert torch.allclose(after[path][1], expected_b, atol=1e-5), path
    assert report["n_projected"] == len(chosen)


def test_zero_layers_leave_the_sft_adapter_unchanged(student, aligned_dir, base_dir):
    before = lora_state(student)
    project_model(student, SafeLoraArgs(str(aligned_dir), str(base_dir), safelora_layers=0))
    for path, (a, b) in lora_state(student).items():
        assert torch.equal(a, before[path][0]) and torch.equal(b, before[path][1])


def test_safelora_command_writes_a_projected_adapter_and_report(
    student, aligned_dir, base_dir, pair_weights, tmp_path, tokenizer, capsys
):
    adapter = tmp_path / "final"
    student.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    original = load_file(str(adapter / "adapter_model.safetensors"))
    argv = ["safelora", "--adapter", str(adapter), "--safety_aligned_model", str(aligned_dir)]
    argv += ["--safety_base_model", str(base_dir), "--safelora_layers", "3"]
    assert main(argv) == 0
    out_dir = tmp_path / "final_safelora"
    report = json.loads((out_dir / "safelora_report.json").read_text())
    assert report["n_projected"] == 3 and len(report["layers"]) == 4
    assert [row["module"] for row in report["layers"]] == [name for name, _ in lora_modules(student)]  # model order
    assert (out_dir / "adapter_config.json").is_file() and (out_dir / "tokenizer_config.json").is_file()
    assert '"n_projected": 3' in capsys.readouterr().out
    _, proj, chosen = expected_projection(lora_state(student), pair_weights, n=3)
    projected = load_file(str(out_dir / "adapter_model.safetensors"))
    assert set(projected) == set(original)
    for key, tensor in original.items():
        path = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        if key.endswith("lora_B.weight") and path in chosen:
            assert torch.allclose(projected[key], proj[path], atol=1e-5), key
        else:
            assert torch.equal(projected[key], tensor), key
    assert torch.equal(load_file(str(adapter / "adapter_model.safetensors"))[key], original[key])  # source kept


def test_errors_name_the_problem(tmp_path, tokenizer, aligned_dir, base_dir, student):
    with pytest.raises(AdapterError, match="not a LoRA adapter"):
        adapter_lora_factors(tmp_path)
    with pytest.raises(AdapterError, match="no LoRA layers"):
        next(lora_modules(tiny_llama(tokenizer)))
    with pytest.raises(AdapterError, match="V = 0"):
        project_model(student, SafeLoraArgs(str(aligned_dir), str(aligned_dir)))
    with pytest.raises(AdapterError, match="is a LoRA adapter"):
        student.save_pretrained(str(tmp_path / "adapter"))
        AlignmentPair.load(str(tmp_path / "adapter"), str(base_dir))
    with pytest.raises(ValueError, match="must differ"):
        main(
            ["--debug", "safelora", "--adapter", str(tmp_path / "adapter"), "--output_dir", str(tmp_path / "adapter")]
        )
    with pytest.raises(ValueError, match="needs --adapter"):
        from tokensafe.baselines.safelora import SafeLoraConfig, run_safelora

        run_safelora(SafeLoraConfig())


def test_model_weights_names_every_tensor_of_the_files_and_reads_each(aligned_dir, pair_weights):
    from tokensafe.baselines.directions import model_weights

    weights = model_weights(str(aligned_dir))
    aligned, _ = pair_weights
    files = {k for f in sorted(aligned_dir.glob("*.safetensors")) for k in load_file(str(f))}
    assert sorted(weights.names()) == sorted(files)
    shared = [n for n in weights.names() if n in aligned]
    assert shared  # the independent state dict names the same tensors
    for name in shared[:3]:
        assert torch.equal(weights.get(name), aligned[name].float())
