"""The fast paths give the reference's numbers: in-place and chunked inference, autograd, torch.compile, export."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config, tiny_reference, to_hf_pvt_state_dict

from hf_pvt import cpu_paths_hf_pvt, modeling_hf_pvt
from hf_pvt.conversion.layouts import ORIGINAL_TO_HF_PVT, rename_key
from hf_pvt.cpu_paths_hf_pvt import CpuMlpFunction, conv_to_tokens, tokens_to_map
from hf_pvt.modeling_hf_pvt import HfPvtForImageClassification, HfPvtMlp


def _model_and_reference(member: str) -> tuple[HfPvtForImageClassification, torch.nn.Module]:
    reference = tiny_reference(member)
    model = HfPvtForImageClassification(tiny_config(member)).eval()
    model.load_state_dict(to_hf_pvt_state_dict(reference), strict=True)
    return model, reference


def test_tokens_to_map_is_a_view_that_convolutions_accept():
    tokens = torch.randn(2, 6 * 5, 8)
    feature_map = tokens_to_map(tokens, 6, 5)
    assert feature_map.data_ptr() == tokens.data_ptr()
    torch.testing.assert_close(feature_map, tokens.transpose(1, 2).reshape(2, 8, 6, 5), atol=0, rtol=0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    back = conv(feature_map).flatten(2).transpose(1, 2)
    assert back.is_contiguous()
    expected = conv(tokens.transpose(1, 2).reshape(2, 8, 6, 5).contiguous()).flatten(2).transpose(1, 2)
    torch.testing.assert_close(back, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
@pytest.mark.parametrize("kernel, size", [(4, (17, 10)), (2, (6, 7)), (1, (3, 5)), (8, (8, 8))])
def test_patch_matmul_gives_the_convolution(layout, kernel, size):
    """Kernel == stride convolutions in inference, as a matmul over patches (leftover rows and columns dropped, as
    the conv does); under autograd the convolution itself."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, kernel, stride=kernel)
    feature_map = torch.randn(2, 6, *size)
    if layout == "channels-last":
        feature_map = tokens_to_map(feature_map.flatten(2).transpose(1, 2).contiguous(), *size)
    with torch.no_grad():
        expected = conv(feature_map)
        tokens, height, width = conv_to_tokens(conv, feature_map)
    assert (height, width) == expected.shape[-2:] and tokens.is_contiguous()
    torch.testing.assert_close(tokens, expected.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    tokens, _, _ = conv_to_tokens(conv, feature_map)
    assert "Convolution" in tokens.grad_fn.next_functions[0][0].next_functions[0][0].name()


def test_other_convolutions_keep_the_convolution():
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    feature_map = torch.randn(1, 3, 9, 9)
    tokens, height, width = conv_to_tokens(conv, feature_map)
    torch.testing.assert_close(tokens, conv(feature_map).flatten(2).transpose(1, 2), atol=0, rtol=0)
    assert (height, width) == (5, 5)


@pytest.mark.parametrize("chunk_bytes", [1, 3000, 2**30])
def test_chunked_cpu_inference_matches_the_reference(member, chunk_bytes, monkeypatch):
    """The MLP of CPU inference runs on chunks that share one fc1 buffer: single tokens (v1) or bands of two or a
    few image rows (v2), or everything in one chunk; the result must stay the reference's, and the modules' own
    path must not be taken."""
    model, reference = _model_and_reference(member)
    pixel_values = torch.randn(2, 3, 40, 36)
    chunk_counts, plain_calls = [], []
    rows_of, bands_of, fast = cpu_paths_hf_pvt.chunk_rows, cpu_paths_hf_pvt.image_bands, cpu_paths_hf_pvt.mlp_forward

    def counting(function):
        def counted(*args):
            result = function(*args)
            chunk_counts.append(len(result))
            return result

        return counted

    def counting_fast(*args):  # the modules' own path runs exactly when the fast path declines
        result = fast(*args)
        if result is None:
            plain_calls.append(1)
        return result

    monkeypatch.setattr(cpu_paths_hf_pvt, "chunk_rows", counting(rows_of))
    monkeypatch.setattr(cpu_paths_hf_pvt, "image_bands", counting(bands_of))
    monkeypatch.setattr(modeling_hf_pvt, "mlp_forward", counting_fast)
    monkeypatch.setattr(cpu_paths_hf_pvt, "INFERENCE_CHUNK_BYTES", chunk_bytes)
    with torch.inference_mode():
        logits = model(pixel_values).logits
        features = model.pvt(pixel_values).feature_maps
    assert not plain_calls and chunk_counts
    assert (max(chunk_counts) > 1) == (chunk_bytes < 2**30)
    with torch.no_grad():
        torch.testing.assert_close(logits, reference(pixel_values), atol=1e-5, rtol=1e-5)
        for ours, theirs in zip(features, reference.forward_stages(pixel_values)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_image_bands_tile_the_rows():
    for height in range(1, 12):
        for band_rows in range(2, 6):
            bands = cpu_paths_hf_pvt.image_bands(height, band_rows)
            assert [row for top, bottom in bands for row in range(top, bottom)] == list(range(height))
            assert all(0 < bottom - top <= band_rows for top, bottom in bands)


@pytest.mark.parametrize("member", ["v2", "v2-linear"])
def test_banded_mlp_gives_the_plain_mlp_at_every_height(member):
    """Bands of 2-5 image rows (the buffer handing its last two rows on, zero rows at the image's edges), on images
    of 1-9 rows, including a last band of one row: the plain module's result."""
    torch.manual_seed(0)
    mlp = HfPvtMlp(tiny_config(member), 8, 4).eval()
    for height in range(1, 10):
        for band_rows in range(2, 6):
            width = 3
            hidden_states = torch.randn(2, height * width, 8)
            with torch.no_grad():
                expected = mlp.fc1(hidden_states)
                if mlp.relu is not None:
                    expected = expected.relu()
                expected = mlp.dwconv(expected.transpose(1, 2).reshape(2, -1, height, width).contiguous())
                expected = mlp.fc2(torch.nn.functional.gelu(expected.flatten(2).transpose(1, 2)))
                output = torch.full((2 * height * width, 8), float("nan"))
                cpu_paths_hf_pvt._mlp_inference_bands(
                    mlp, hidden_states.reshape(-1, 8), output, height, width, band_rows
                )
            torch.testing.assert_close(output.view_as(expected), expected, atol=1e-6, rtol=1e-5)


def test_training_path_gives_the_reference_gradients(member):
    """With autograd the activations stay out of place; the in-place residual sums must not corrupt backward."""
    model, reference = _model_and_reference(member)
    model.train()
    reference.train()
    pixel_values = torch.randn(2, 3, 64, 48)
    model(pixel_values).logits.square().sum().backward()
    reference(pixel_values).square().sum().backward()
    ours = {name: p.grad for name, p in model.named_parameters()}
    for name, parameter in reference.named_parameters():
        grad = ours[rename_key(name, ORIGINAL_TO_HF_PVT)]
        torch.testing.assert_close(grad, parameter.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("member", ["v1", "v2-linear"])
def test_compile_fullgraph_without_graph_breaks(member):
    """Dynamo must capture the whole forward (fullgraph=True raises on any break); the eager backend keeps it fast."""
    torch._dynamo.reset()
    model, reference = _model_and_reference(member)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).logits, reference(pixel_values), atol=1e-5, rtol=1e-5)


def test_compile_fullgraph_with_inductor_matches_eager():
    torch._dynamo.reset()
    model, _ = _model_and_reference("v2")
    compiled = torch.compile(model, fullgraph=True)
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("member", ["v1", "v2"])
def test_torch_export_matches_eager(member):
    model, reference = _model_and_reference(member)
    pixel_values = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (pixel_values,))
    other = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other).logits, reference(other), atol=1e-5, rtol=1e-5)


def _step_gradients(model, pixel_values, dtype=None) -> tuple[torch.Tensor, dict, torch.Tensor]:
    pixel_values = pixel_values.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits = model(pixel_values).logits
    logits.float().square().sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads, pixel_values.grad


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_fused_training_mlp_gives_autograd_outputs_and_gradients(member, dtype, monkeypatch):
    """The hand-written MLP backward of CPU training (chunks of rows or images, recomputed conv and GELU) against
    the MLP's own modules under autograd: outputs, every parameter gradient and the input gradient."""
    torch.manual_seed(0)
    model = HfPvtForImageClassification(tiny_config(member)).train()
    pixel_values = torch.randn(3, 3, 64, 48)
    # Small chunks, so that the weight gradients really sum over several chunks (one image each for v2).
    monkeypatch.setattr(cpu_paths_hf_pvt, "TRAINING_CHUNK_BYTES", 3000)
    calls = []
    apply = CpuMlpFunction.apply
    monkeypatch.setattr(CpuMlpFunction, "apply", lambda *args: calls.append(1) or apply(*args))
    fused = _step_gradients(model, pixel_values, dtype)
    assert len(calls) == sum(tiny_config(member).depths)
    monkeypatch.setattr(cpu_paths_hf_pvt, "fused_backward_applies", lambda mlp, hidden_states: False)
    plain = _step_gradients(model, pixel_values, dtype)
    assert len(calls) == sum(tiny_config(member).depths)
    tolerance = {"atol": 1e-5, "rtol": 1e-4} if dtype is None else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(fused[0], plain[0], **tolerance)
    torch.testing.assert_close(fused[2], plain[2], **tolerance)
    assert fused[1].keys() == plain[1].keys()
    for name, grad in plain[1].items():
        assert fused[1][name].dtype == grad.dtype, name
        torch.testing.assert_close(fused[1][name], grad, **tolerance, msg=name)


def test_fused_training_mlp_skips_frozen_weights(monkeypatch):
    """Frozen MLP weights get no gradient; the trainable ones still get autograd's."""
    torch.manual_seed(0)
    model = HfPvtForImageClassification(tiny_config("v2-linear")).train()
    for name, parameter in model.named_parameters():
        if ".mlp.fc1." in name or ".mlp.dwconv.weight" in name:
            parameter.requires_grad_(False)
    pixel_values = torch.randn(2, 3, 64, 64)
    _, fused, fused_input = _step_gradients(model, pixel_values)
    monkeypatch.setattr(cpu_paths_hf_pvt, "fused_backward_applies", lambda mlp, hidden_states: False)
    _, plain, plain_input = _step_gradients(model, pixel_values)
    assert not any(".mlp.fc1." in name or ".mlp.dwconv.weight" in name for name in fused)
    torch.testing.assert_close(fused_input, plain_input, atol=1e-5, rtol=1e-4)
    for name, grad in plain.items():
        torch.testing.assert_close(fused[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_training_mlp_stays_off_where_it_would_differ():
    """Dropout inside the MLP or another activation take the modules' own path."""
    hidden_states = torch.randn(2, 16, 16, requires_grad=True)
    for overrides in ({"hidden_dropout_prob": 0.1}, {"hidden_act": "relu"}):
        mlp = HfPvtMlp(tiny_config("v2", **overrides), 16, 2).train()
        assert "CpuMlpFunction" not in mlp(hidden_states, 4, 4).grad_fn.name()
    mlp = HfPvtMlp(tiny_config("v2"), 16, 2).train()
    assert "CpuMlpFunction" in mlp(hidden_states, 4, 4).grad_fn.name()
    with torch.no_grad():
        assert mlp(hidden_states, 4, 4).grad_fn is None


def test_patch_matmul_weight_copy_follows_the_weight():
    """The token-order copy of a spatial-reduction weight is reused across calls, and renewed when the weight is
    written in place, replaced, or the module copied and changed; it never appears in the state dict."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 2, stride=2)
    feature_map = tokens_to_map(torch.randn(2, 16, 6), 4, 4)

    def check(module):
        with torch.inference_mode():
            tokens, _, _ = conv_to_tokens(module, feature_map)
            expected = module(feature_map).flatten(2).transpose(1, 2)
        torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)

    check(conv)
    first = conv.__dict__["_hf_pvt_token_order_weight"][3]
    check(conv)
    assert conv.__dict__["_hf_pvt_token_order_weight"][3] is first
    with torch.no_grad():
        conv.weight.mul_(-2)
    check(conv)
    conv.weight = torch.nn.Parameter(torch.randn_like(conv.weight))
    check(conv)
    copied = copy.deepcopy(conv)
    with torch.no_grad():
        copied.weight.add_(1)
    check(copied)
    check(conv)
    assert set(conv.state_dict()) == {"weight", "bias"}
    # Made in inference mode, the copy is still a normal tensor: usable under no_grad and with autograd on.
    with torch.no_grad():
        torch.testing.assert_close(conv_to_tokens(conv, feature_map)[0], conv(feature_map).flatten(2).transpose(1, 2))


@pytest.mark.parametrize("member", ["v1", "v2", "v2-linear"])
def test_switching_the_fast_paths_off_changes_nothing_but_the_path(member, monkeypatch):
    """HF_PVT_FAST_PATHS=0 (read at every call) runs the plain modules: the same outputs and gradients, and
    really none of the fast paths."""
    torch.manual_seed(0)
    model = HfPvtForImageClassification(tiny_config(member)).train()
    pixel_values = torch.randn(2, 3, 64, 48)
    calls = []
    for name in ("mlp_inference", "_token_order_weight"):
        original = getattr(cpu_paths_hf_pvt, name)
        monkeypatch.setattr(cpu_paths_hf_pvt, name, lambda *args, f=original, n=name: calls.append(n) or f(*args))
    apply = CpuMlpFunction.apply
    monkeypatch.setattr(CpuMlpFunction, "apply", lambda *args: calls.append("CpuMlpFunction") or apply(*args))

    def run() -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor]:
        with torch.inference_mode():
            inference = model.eval()(pixel_values).logits
        logits, grads, input_grad = _step_gradients(model.train(), pixel_values)
        return inference, logits, grads, input_grad

    fast = run()
    assert {"mlp_inference", "CpuMlpFunction", "_token_order_weight"} <= set(calls)
    calls.clear()
    monkeypatch.setenv("HF_PVT_FAST_PATHS", "0")
    plain = run()
    assert calls == []
    torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[1], plain[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[3], plain[3], atol=1e-5, rtol=1e-4)
    assert fast[2].keys() == plain[2].keys()
    for name, grad in plain[2].items():
        torch.testing.assert_close(fast[2][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    monkeypatch.setenv("HF_PVT_FAST_PATHS", "1")
    with torch.inference_mode():
        model.eval()(pixel_values)
    assert "mlp_inference" in calls


@pytest.mark.parametrize("num_labels", [1, 5, 16, 37])
def test_chunked_class_map_is_the_argmax_of_the_resized_logits(num_labels, monkeypatch):
    """Semantic FPN's post-processing resizes the classes a chunk at a time: the same classes as resizing all of
    them and taking the argmax, ties (lowest class) and NaNs (they win) included; with the switch off, in one piece."""
    from hf_pvt.semantic_fpn_hf_pvt import upsampled_class_map

    torch.manual_seed(0)
    logits = torch.randn(num_labels, 9, 13)
    logits[num_labels // 2, :3] = logits[0, :3]  # exact ties
    logits[-1, 4, 5] = float("nan")
    sizes = [[36, 52], [35, 47]]
    expected = logits[None]
    for size in sizes:
        expected = torch.nn.functional.interpolate(expected, size=size, mode="bilinear", align_corners=False)
    expected = expected[0].argmax(0)
    for chunk in (1, 4, 16):
        monkeypatch.setattr("hf_pvt.semantic_fpn_hf_pvt.CLASSES_PER_CHUNK", chunk)
        assert torch.equal(upsampled_class_map(logits, sizes), expected)
    monkeypatch.setenv("HF_PVT_FAST_PATHS", "0")
    assert torch.equal(upsampled_class_map(logits, sizes), expected)
