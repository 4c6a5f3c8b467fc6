"""The lycoris-lora driver: a pass-through (lycoris's exceptions, warnings and values reach the suite unchanged),
canonical layouts that round-trip and mean what SPEC means, and a real targeted run without harness crashes."""

from __future__ import annotations

import warnings

import lycoris
import pytest
import torch
from torch import nn

from conformance.check import check
from conformance.drivers.lycoris import LycorisDriver
from conformance.harness import KEY, Holder

DRIVER = LycorisDriver()


def adapted(module: nn.Module, tuner: str, **config) -> nn.Module:
    return DRIVER.adapt(Holder(module.double()), tuner, DRIVER.make_config(tuner, {**config, "target_modules": [KEY]}))


class Raised(Exception):
    """An exception only the stubbed library raises."""


class StubNetwork(nn.Module):
    """Stands in for a `LycorisNetwork`: records the calls the driver makes; the call named `raise_on` warns, then
    raises."""

    def __init__(self, raise_on: str | None = None) -> None:
        super().__init__()
        self.calls: list[tuple] = []
        self.raise_on = raise_on
        self.loras: list[nn.Module] = []

    def _called(self, name: str, *args) -> None:
        self.calls.append((name, *args))
        if name == self.raise_on:
            warnings.warn(f"stub {name}", UserWarning, stacklevel=2)
            raise Raised(name)

    def apply_to(self) -> None:
        self._called("apply_to")

    def restore(self) -> None:
        self._called("restore")

    def onfly_merge(self, weight: float = 1.0) -> None:
        self._called("onfly_merge", weight)

    def onfly_restore(self) -> None:
        self._called("onfly_restore")

    def merge_to(self, weight: float = 1.0) -> None:
        self._called("merge_to", weight)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> StubNetwork:
    network = StubNetwork()
    monkeypatch.setattr(lycoris, "create_lycoris", lambda model, multiplier, **options: network)
    return network


def test_adapt_returns_the_network_lycoris_made_and_applies_it(stub):
    model = adapted(nn.Linear(3, 2), "loha", r=2, alpha=4)
    assert model.network is stub
    assert stub.calls == [("apply_to",)]


def test_merge_and_unmerge_are_lycoris_calls_in_order(stub):
    model = adapted(nn.Linear(3, 2), "ia3", feedforward_modules=[])
    stub.calls.clear()
    DRIVER.merge(model, safe=True)
    DRIVER.unmerge(model)
    assert stub.calls == [("restore",), ("onfly_merge", 1.0), ("onfly_restore",), ("apply_to",)]


def test_merge_and_unload_is_lycoris_merge_and_returns_the_base_model(stub):
    model = adapted(nn.Linear(3, 2), "loha")
    stub.calls.clear()
    assert DRIVER.merge_and_unload(model) is model.model
    assert DRIVER.unload(model) is model.model
    assert stub.calls == [("restore",), ("merge_to", 1.0), ("restore",)]


@pytest.mark.parametrize("failing", ["apply_to", "restore", "onfly_merge", "onfly_restore"])
def test_exceptions_and_warnings_pass_through(stub, failing):
    stub.raise_on = failing
    with pytest.raises(Raised, match=failing), pytest.warns(UserWarning, match=f"stub {failing}"):
        model = adapted(nn.Linear(3, 2), "loha")
        DRIVER.merge(model)
        DRIVER.unmerge(model)


def test_options_are_the_canonical_fields_only(monkeypatch):
    """Each canonical field reaches its lycoris option; nothing else is passed (upstream defaults)."""
    seen = {}

    def create(model, multiplier, **options):
        seen.update(options, multiplier=multiplier)
        return StubNetwork()

    monkeypatch.setattr(lycoris, "create_lycoris", create)
    adapted(nn.Linear(3, 2), "loha", r=3, alpha=1.5, rank_dropout=0.25, module_dropout=0.5, use_effective_conv2d=True)
    expected = {"linear_dim": 3, "linear_alpha": 1.5, "rank_dropout": 0.25, "module_dropout": 0.5, "use_tucker": True}
    assert seen == {"algo": "loha", "multiplier": 1.0, **expected}


def test_parameters_are_lycoris_own_tensors():
    """get_params hands out the module's live parameters (LoHa's layout is SPEC's): nothing copied or changed."""
    model = adapted(nn.Linear(3, 2), "loha", r=2)
    module = model.network.loras[0]
    params = DRIVER.get_params(model, KEY, "default")
    assert all(params[name] is getattr(module, name) for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))


def test_base_layer_is_the_live_module_computing_the_base_output():
    """lycoris replaces the module's forward: the base layer the driver reports shares its parameters (the same
    objects) and computes the base output, not the adapted one."""
    linear = nn.Linear(4, 3)
    model = adapted(linear, "ia3", feedforward_modules=[])
    DRIVER.set_params(model, KEY, "default", {"ia3_l": torch.full((3, 1), 2.0, dtype=torch.float64)})
    base = DRIVER.layer_state(model, KEY).base_layer
    assert type(base) is nn.Linear and base.weight is linear.weight and base.bias is linear.bias
    x = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(base(x), nn.functional.linear(x, linear.weight, linear.bias))
    assert not torch.equal(model(x), base(x))


# ---- layouts ----------------------------------------------------------------------------------------------------

LOHA_CASES = [
    (lambda: nn.Linear(5, 4), False),
    (lambda: nn.Conv2d(4, 6, 3, groups=2), False),
    (lambda: nn.Conv1d(3, 4, 3), True),
    (lambda: nn.Conv2d(3, 4, (3, 2)), True),
]


@pytest.mark.parametrize(("make", "effective"), LOHA_CASES)
def test_loha_layout_round_trip(make, effective):
    """get → set → get is the identity, and set writes exactly the canonical values it is given (⟨Z⟩)."""
    model = adapted(make(), "loha", r=2, alpha=2, use_effective_conv2d=effective)
    first = DRIVER.get_params(model, KEY, "default")
    assert effective == ("hada_t1" in first)
    fresh = {name: torch.randn(value.shape, dtype=value.dtype) for name, value in first.items()}
    DRIVER.set_params(model, KEY, "default", fresh)
    again = DRIVER.get_params(model, KEY, "default")
    assert again.keys() == fresh.keys()
    for name, value in fresh.items():
        assert torch.equal(again[name], value), name


def test_loha_conv1d_cores_have_spec_shape():
    """LOHA-PARAM-2: Conv1d effective cores are `(r, r, k, 1)`."""
    params = DRIVER.get_params(adapted(nn.Conv1d(3, 4, 5), "loha", r=2, use_effective_conv2d=True), KEY, "default")
    assert tuple(params["hada_t1"].shape) == tuple(params["hada_t2"].shape) == (2, 2, 5, 1)


@pytest.mark.parametrize("feedforward", [False, True])
def test_ia3_vector_is_what_the_forward_scales_by(feedforward):
    """The canonical `ia3_l` set through the driver is the vector lycoris's forward applies: bias-free Linear,
    `y = l ⊙ (x Wᵀ)` (IA3-FWD-1) or `y = (l ⊙ x) Wᵀ` (IA3-FWD-2), in SPEC's shape `(out, 1)` / `(1, in)`."""
    base = nn.Linear(5, 3, bias=False).double()
    model = adapted(base, "ia3", feedforward_modules=[KEY] if feedforward else [])
    shape = (1, 5) if feedforward else (3, 1)
    assert tuple(DRIVER.get_params(model, KEY, "default")["ia3_l"].shape) == shape
    vector = torch.rand(shape, dtype=torch.float64) + 0.5
    DRIVER.set_params(model, KEY, "default", {"ia3_l": vector})
    x = torch.randn(4, 5, dtype=torch.float64)
    weight = base.weight.detach()
    expected = (x * vector) @ weight.T if feedforward else (x @ weight.T) * vector.T
    assert torch.allclose(model(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("feedforward", [False, True])
def test_ia3_layout_round_trip_within_rounding(feedforward):
    """`ia3_l` is declared inexact: set then get returns the vector up to the rounding of `(l − 1) + 1`."""
    model = adapted(nn.Conv2d(3, 4, 1), "ia3", feedforward_modules=[KEY] if feedforward else [])
    assert "ia3_l" in DRIVER.capabilities().tuners["ia3"].inexact_layouts
    shape = tuple(DRIVER.get_params(model, KEY, "default")["ia3_l"].shape)
    assert shape == ((1, 3, 1, 1) if feedforward else (1, 4, 1, 1))
    vector = torch.rand(shape, dtype=torch.float32) + 0.1
    DRIVER.set_params(model, KEY, "default", {"ia3_l": vector})
    again = DRIVER.get_params(model, KEY, "default")["ia3_l"]
    assert torch.allclose(again, vector, rtol=0, atol=torch.finfo(torch.float32).eps)


# ---- a real targeted run -------------------------------------------------------------------------------------------


def test_a_targeted_run_judges_every_row():
    """The structure family on both tuners: every row is judged (pass, fail or skip), none is a harness error."""
    report = check("lycoris", tuners=["loha", "ia3"], families=["structure"], isolate=False, verify=False)
    statuses = {row.status for row in report.results}
    assert report.results and statuses <= {"pass", "fail", "skip"}, statuses
    assert "pass" in statuses
