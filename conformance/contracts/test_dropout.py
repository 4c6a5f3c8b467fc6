"""Family `dropout`: train-mode dropout semantics (SPEC §1.11 CORE-DROP-1/2, MISS-DROP-1, GRALORA-DROP-1,
LOHA-DROP-1…3).

Dropout is random, so each check recovers the masks a train-mode forward used from its output, exactly, and then
judges them by §8's ⟨P⟩ rule (a two-sided binomial test at p ≥ 1e-6, fixed seeds):
- input dropout (CORE-DROP-2): every row of `x` has two non-zero entries, so the output row is `base(x)` plus one of
  the 2^(paths·2) sums of kept, 1/(1−p)-scaled column contributions; the nearest candidate within ⟨N⟩ (float64)
  gives the mask, and an output matching none of them (unscaled, dropped base input, dropout on the output, …)
  fails the clause outright;
- rank dropout (LOHA-DROP-1): per output channel, the factor of each adapter's full delta, by least squares;
- module dropout (LOHA-DROP-3): per forward, which adapters were applied.
The frequencies of kept elements, and the agreement of disjoint pairs of mask entries that must be independent
(two entries of one row, the same entry in two rows, two forwards, two output channels, two adapters), are then
binomial with known probabilities."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from conformance.assertions import Context, assert_close_to_oracle, assert_equal, fail
from conformance.drivers.base import Discrepancy, Driver
from conformance.harness import KEY, seed_torch
from conformance.rows import SHOULD, RowSpec
from conformance.scenes import ALL_DTYPES, SECOND, Scene, build, draw_setup, fill_row, offers
from conformance.spec.layer import Adapter, op
from conformance.spec.record import TunerRecord
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import Tolerance, scale, tolerance, violations
from conformance.strategies import input_shapes

Tensor = torch.Tensor

LEVEL = 1e-6  # §8 ⟨P⟩: "dropout frequencies by a two-sided binomial test at p ≥ 1e-6"
PROBABILITIES = (0.1, 0.25, 0.5, 0.75, 0.9)
# CORE-DROP-2 names the input-dropout fields; LoHa's are LOHA-DROP-1 (rank) and LOHA-DROP-3 (module). Proposed as a
# record field (`TunerRecord.dropouts: dict[kind, field]`).
INPUT_DROPOUT = ("miss_dropout", "gralora_dropout")
RANK_DROPOUT, MODULE_DROPOUT = "rank_dropout", "module_dropout"
# GRALORA-DROP-1: the two adapter paths input dropout feeds, by the canonical parameters each is made of (§3.3).
PATHS = {
    "GRALORA-DROP-1": {
        "block": ("gralora_A", "gralora_B"),
        "hybrid": ("gralora_A_general.weight", "gralora_B_general.weight"),
    }
}
NO_INPUT_VARIANTS = {"MISS-DROP-1": ("bat",)}  # "it has no effect in BAT mode"
HALF_ROWS = 300  # rows of x in each half of the input-dropout design (the second half repeats the first's positions)
FORWARDS_RANK = 400  # LOHA-DROP-1: at least this many channel samples per adapter (forwards × out)
FORWARDS_MODULE = 200  # LOHA-DROP-3: forwards per example


# ---------------------------------------------------------------------------------------------------------------
# §8 ⟨P⟩: the binomial test


def binomial_p_value(k: int, n: int, q: float) -> float:
    """Exact two-sided binomial test: the probability, under Binomial(n, q), of an outcome no more likely than k."""
    ks = torch.arange(n + 1, dtype=torch.float64)
    log_pmf = (
        math.lgamma(n + 1)
        - torch.lgamma(ks + 1)
        - torch.lgamma(n - ks + 1)
        + ks * math.log(q)
        + (n - ks) * math.log1p(-q)
    )
    observed = log_pmf[k]
    return float(torch.exp(log_pmf[log_pmf <= observed + 1e-9 * abs(observed)]).sum().clamp(max=1.0))


def assert_binomial(context: Context, what: str, successes: int, trials: int, q: float) -> None:
    """`successes` of `trials` is a plausible draw of Binomial(trials, q) at §8's level (exact when q is 0 or 1)."""
    __tracebackhide__ = True
    if trials == 0:
        return
    if q in (0.0, 1.0):
        assert_equal(context, f"{what} (of {trials})", successes, round(q * trials))
        return
    p_value = binomial_p_value(successes, trials, q)
    if p_value < LEVEL:
        fail(
            context,
            f"{what} = {successes} of {trials}, but should be Binomial({trials}, {q:.4g}) (mean {q * trials:.1f}): "
            f"two-sided binomial test p = {p_value:.3g} < {LEVEL:g}",
        )


def assert_agreement(context: Context, what: str, first: Tensor, second: Tensor, q: float) -> None:
    """Paired mask entries that must be independent agree as often as Binomial(pairs, q) allows."""
    __tracebackhide__ = True
    assert_binomial(context, f"{what}: pairs that agree", int((first == second).sum()), first.numel(), q)


def agree_probability(p: float, p2: float | None = None) -> float:
    """P(two independent masks agree): p·p′ + (1−p)(1−p′)."""
    p2 = p if p2 is None else p2
    return p * p2 + (1 - p) * (1 - p2)


# ---------------------------------------------------------------------------------------------------------------
# Shared steps


def dropout_fields(record: TunerRecord) -> list[str]:
    """The tuner's dropout probabilities: its SPEC table fields named `…dropout` (CORE-CFG-6's fields)."""
    return [field for field in record.defaults if field.endswith("dropout")]


def with_fields(setup_configs: dict[str, dict], values: dict[str, float]) -> dict[str, dict]:
    return {name: {**config, **values} for name, config in setup_configs.items()}


def train_forwards(scene: Scene, x: Tensor, count: int) -> list[Tensor]:
    """`count` train-mode forwards of the same `x`, torch's global RNG seeded from the example (reruns agree)."""
    scene.model.train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        seed_torch(scene.setup.seed)
        outputs = [scene.model(x) for _ in range(count)]
    scene.model.eval()
    return outputs


def replayed(scene: Scene, forwards: int) -> dict:
    """The `Discrepancy` fields a repro replays `train_forwards` with: the output of the `forwards`-th forward."""
    return {"target": "output", "mode": "train", "forwards": forwards, "train_seed": scene.setup.seed}


def delta(scene: Scene, adapter: Adapter, weight: Tensor) -> Tensor:
    """ΔW of one adapter: the oracle's effective weight minus the base weight (additive tuners)."""
    return scene.setup.record.oracle.effective(weight, None, scene.setup.layer, [adapter])[0] - weight


def nearest(
    context: Context,
    what: str,
    observed: Tensor,
    candidates: Tensor,
    tol: Tolerance,
    forward: Callable[[int, Tensor], tuple[Tensor, dict]] | None = None,
) -> tuple[Tensor, Tensor]:
    """For observations (N, L) and candidates (C, N or 1, L): the index of the nearest candidate of each observation,
    and whether it is the only one within `tol` (unambiguous). An observation within `tol` of no candidate violates
    the clause: the failure shows it against the nearest candidate — all such observations, or, with `forward`
    (observation n is forward n; `forward(n, row)` gives the row in the output's layout and the `Discrepancy` fields
    that replay that forward), the first such forward, as its output."""
    __tracebackhide__ = True
    s = scale(candidates)
    fits = ~violations(observed.unsqueeze(0), candidates, tol, s).any(-1)  # (C, N)
    error = (observed.unsqueeze(0) - candidates).abs().amax(-1)  # (C, N)
    error = torch.where(torch.isnan(error), torch.full_like(error, math.inf), error)
    best = error.argmin(0)
    rows = torch.arange(observed.shape[0])
    ok = fits[best, rows]
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten()
        chosen = candidates[best[bad], bad if candidates.shape[1] > 1 else 0]
        if forward is None:
            assert_close_to_oracle(context=context, what=what, actual=observed[bad], expected=chosen, tol=tol, scale=s)
        first = int(bad[0])
        (actual, observe), (expected, _) = forward(first, observed[first]), forward(first, chosen[0])
        what = f"{what}: forward {first} ({len(bad)} of {observed.shape[0]} forwards match no candidate)"
        assert_close_to_oracle(
            context=context, what=what, actual=actual, expected=expected, tol=tol, scale=s, observe=observe
        )
    return best, fits.sum(0) == 1


# ---------------------------------------------------------------------------------------------------------------
# CORE-DROP-1


@pytest.mark.contract("CORE-DROP-1")
@given(data=st.data())
def test_dropout_only_in_train_mode(row, driver, data):
    """CORE-DROP-1: with every dropout probability 0 the train-mode forward equals the eval-mode forward (⟨N⟩, any
    dtype); and with the tuner's dropout probabilities > 0 (where it has any), the eval-mode forward is still the
    dropout-free closed form."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    setup = draw_setup(driver, row, data)
    fields = dropout_fields(setup.record)
    configs = setup.configs
    setup.configs = with_fields(configs, dict.fromkeys(fields, 0.0))
    scene = build(driver, setup)
    x = scene.input(data)
    with torch.no_grad():
        evaluated = scene.model(x)
    (trained,) = train_forwards(scene, x, 1)
    assert_close_to_oracle(
        context=scene.context,
        what=f"train-mode output with {fields or 'no dropout fields'} = 0, vs the eval-mode output",
        actual=trained,
        expected=evaluated,
        tol=tolerance("N", row.dtype),
        scale=scale(evaluated),
    )
    if not fields:
        return
    p = data.draw(st.sampled_from([0.5, 1.0]), label="dropout")
    setup.configs = with_fields(configs, dict.fromkeys(fields, p))
    scene = build(driver, setup)
    scene.context.shapes["x"] = tuple(x.shape)  # the same input
    with torch.no_grad():
        y = scene.model(x)
    expected = scene.expected_output(x, {KEY: scene.effective(driver, ["default"])})
    assert_close_to_oracle(
        context=scene.context,
        what=f"eval-mode output with {fields} = {p}, vs the dropout-free closed form",
        actual=y,
        expected=expected,
        tol=tolerance("N", row.dtype),
        scale=scale(expected),
    )


# ---------------------------------------------------------------------------------------------------------------
# CORE-DROP-2, MISS-DROP-1, GRALORA-DROP-1: input dropout


def pair_design(n_in: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """x (n, in) whose rows have two non-zero entries (every pair of positions i < j equally often; one entry when
    in = 1) of magnitude U(0.5, 1.5) and random sign; the second half of the rows repeats the first half's positions.
    Returns x, the positions (n, k) and the values (n, k)."""
    pairs = [(i, j) for i in range(n_in) for j in range(i + 1, n_in)] or [(0,)]
    half = torch.tensor(pairs * math.ceil(HALF_ROWS / len(pairs)), dtype=torch.long)
    positions = torch.cat([half, half])
    values = 0.5 + torch.rand(positions.shape, generator=generator, dtype=torch.float64)
    values = values * torch.where(torch.rand(positions.shape, generator=generator) < 0.5, -1.0, 1.0).double()
    x = torch.zeros(positions.shape[0], n_in, dtype=torch.float64).scatter_(1, positions, values)
    return x, positions, values


def path_deltas(scene: Scene, driver: Driver, weight: Tensor, paths: dict[str, tuple[str, ...]] | None) -> dict:
    """ΔW of each path of the adapter `default` (the whole adapter when the clause names no paths): the oracle's
    ΔW with every parameter outside the path set to zero (the paths add up)."""
    adapter = scene.adapter(driver, "default")
    if paths is None:
        return {"adapter": delta(scene, adapter, weight)}
    out = {}
    for name, members in paths.items():
        params = {n: t if n in members else torch.zeros_like(t) for n, t in adapter.params.items()}
        out[name] = delta(scene, Adapter(adapter.config, params), weight)
    return out


def decode_input_masks(
    scene: Scene, y: Tensor, base: Tensor, contributions: Tensor, p: float, what: str
) -> tuple[Tensor, Tensor]:
    """The masks (n, paths, k) of one forward: each output row is base(x) + Σ kept contributions / (1−p)."""
    n_paths, k = contributions.shape[:2]
    combos = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n_paths * k)), dtype=torch.float64)
    combos = combos.reshape(-1, n_paths, k)
    candidates = base + torch.einsum("cpe,peno->cno", combos, contributions) / (1 - p)
    best, unambiguous = nearest(scene.context, what, y.double(), candidates, tolerance("N", "float64"))
    return combos[best].bool(), unambiguous


def check_input_dropout(row: RowSpec, driver: Driver, data: st.DataObject, *, should: bool = False) -> None:
    """Input dropout p on the adapter path of `default` (CORE-DROP-2): every output row of the pair design is base(x)
    (undropped) plus kept column contributions scaled 1/(1−p), per path; p = 1 gives base(x). Kept frequencies and
    the independence of disjoint mask pairs (in a row, across rows, across forwards) are binomial. `should`
    (GRALORA-DROP-1's SHOULD part): the paths share one mask per forward."""
    record = RECORDS[row.tuner]
    fields = [f for f in dropout_fields(record) if f in INPUT_DROPOUT]
    if not fields:
        pytest.skip(f"not applicable: the tuner has no input dropout ({', '.join(INPUT_DROPOUT)})")
    row = fill_row(row, driver, data)
    setup = draw_setup(driver, row, data)
    if setup.layer.is_conv:
        pytest.skip("the input-dropout design is written for linear-type layers")  # no tuner has conv input dropout
    # p = 1 first: the first (simplest) example of every profile covers the boundary case
    p = data.draw(st.sampled_from(PROBABILITIES if should else (1.0, *PROBABILITIES)), label="input dropout")
    setup.configs = with_fields(setup.configs, dict.fromkeys(fields, p))
    scene = build(driver, setup)
    ctx, layer = scene.context, setup.layer
    weight, bias = scene.tensors(driver)
    x, positions, values = pair_design(layer.in_features, torch.Generator().manual_seed(setup.seed + 5))
    ctx.shapes["x"] = tuple(x.shape)
    outputs = train_forwards(scene, x, 2)  # the row is float64 (fill_row's default)
    base = op(x, weight, bias, layer)
    if p == 1.0:
        for y in outputs:
            assert_close_to_oracle(
                context=ctx,
                what=f"train-mode output with {fields} = 1 vs base(x) (the adapter path contributes 0)",
                actual=y,
                expected=base,
                tol=tolerance("N", "float64"),
                scale=scale(base),
            )
        return
    paths = path_deltas(scene, driver, weight, PATHS.get(row.clause.removesuffix(SHOULD)))
    # contributions[path, e, row] = values[row, e] · ΔW_path[:, positions[row, e]]
    contributions = torch.stack(
        [
            torch.stack([values[:, e, None] * d.T[positions[:, e]] for e in range(positions.shape[1])])
            for d in paths.values()
        ]
    )
    what = (
        f"train-mode output row ({fields} = {p}) vs the nearest dropout outcome of its non-zero inputs on {list(paths)}"
    )
    try:
        decoded = [decode_input_masks(scene, y, base, contributions, p, what) for y in outputs]
    except AssertionError:
        if should:
            pytest.skip("the MUST part fails (see the row without .should): the SHOULD part cannot be judged")
        raise
    (m1, ok1), (m2, ok2) = decoded
    event(f"p={p} in={layer.in_features} paths={len(paths)} decoded={float(ok1.double().mean()):.0%}")
    if should:
        for index, (masks, ok) in enumerate(decoded):
            differ = (masks[ok][:, 0] != masks[ok][:, 1]).sum()
            if differ:
                fail(
                    ctx,
                    f"forward {index}: the {' and '.join(paths)} paths dropped different input elements "
                    f"({int(differ)} of {int(ok.sum()) * positions.shape[1]}), but one mask per forward should be "
                    "shared by the two",
                )
        return
    half = x.shape[0] // 2
    for index, name in enumerate(paths):
        a, b = m1[:, index], m2[:, index]
        kept = int(a[ok1].sum() + b[ok2].sum())
        trials = int(ok1.sum() + ok2.sum()) * positions.shape[1]
        assert_binomial(ctx, f"elements of x kept on the {name} path ({fields} = {p})", kept, trials, 1 - p)
        q = agree_probability(p)
        if positions.shape[1] == 2:
            assert_agreement(ctx, f"{name} path: the two entries of a row", a[ok1][:, 0], a[ok1][:, 1], q)
        rows = ok1[:half] & ok1[half:]
        assert_agreement(ctx, f"{name} path: one entry in two rows", a[:half][rows], a[half:][rows], q)
        both = ok1 & ok2
        assert_agreement(ctx, f"{name} path: one entry in two forwards", a[both], b[both], q)


def check_no_input(row: RowSpec, driver: Driver, data: st.DataObject) -> None:
    """A mode without an adapter-path input (MISS-DROP-1: BAT): with input dropout p > 0 the train-mode output is the
    dropout-free closed form, ⟨N⟩."""
    record = RECORDS[row.tuner]
    fields = [f for f in dropout_fields(record) if f in INPUT_DROPOUT]
    row = fill_row(row, driver, data)
    setup = draw_setup(driver, row, data)
    p = data.draw(st.sampled_from([0.5, 1.0]), label="input dropout")
    setup.configs = with_fields(setup.configs, dict.fromkeys(fields, p))
    scene = build(driver, setup)
    x = scene.input(data)
    expected = scene.expected_output(x, {KEY: scene.effective(driver, ["default"])})
    for index, y in enumerate(train_forwards(scene, x, 2)):
        assert_close_to_oracle(
            context=scene.context,
            what=f"train-mode output {index} ({row.variant} mode, {fields} = {p}) vs the dropout-free closed form",
            actual=y,
            expected=expected,
            tol=tolerance("N", row.dtype),
            scale=scale(expected),
        )


@pytest.mark.contract("CORE-DROP-2", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_input_dropout(row, driver, data):
    """CORE-DROP-2: input dropout (`miss_dropout`, `gralora_dropout`) is inverted dropout on the adapter path's input
    only: each element kept with probability 1−p (binomial) and scaled 1/(1−p) (exactly, ⟨N⟩), independently; the
    base path sees the undropped x; p = 1 contributes 0. Tuners without input dropout: skipped (not applicable)."""
    check_input_dropout(row, driver, data)


@pytest.mark.contract("MISS-DROP-1", axes=("variant",))
@given(data=st.data())
def test_miss_dropout(row, driver, data):
    """MISS-DROP-1: `miss_dropout` is input dropout on x before padding and chunk-summing in plain and mini modes
    (rows with two entries i ≡ j mod r tell a mask on x from one on the chunk sum), and has no effect in BAT mode."""
    if row.variant in NO_INPUT_VARIANTS[row.clause]:
        check_no_input(row, driver, data)
    else:
        check_input_dropout(row, driver, data)


@pytest.mark.contract("GRALORA-DROP-1", "GRALORA-DROP-1.should", axes=("variant",), variants=("hybrid",))
@given(data=st.data())
def test_gralora_dropout_feeds_both_paths(row, driver, data):
    """GRALORA-DROP-1: `gralora_dropout` is input dropout (CORE-DROP-2) feeding the block path and the hybrid path,
    each checked on its own; its SHOULD part (`.should` row): one mask per forward is shared by the two."""
    check_input_dropout(row, driver, data, should=row.clause.endswith(SHOULD))


# ---------------------------------------------------------------------------------------------------------------
# LOHA-DROP-1…3: rank and module dropout


def loha_scene(
    row: RowSpec, driver: Driver, data: st.DataObject, values: Sequence[dict[str, float]], dtypes=("float64",)
) -> tuple[Scene, Tensor]:
    """One or two adapters (two where the lifecycle surface is offered, both active), adapter `i` with the dropout
    fields `values[i]`; and an input with several positions per output channel (batch 8, or 2 for convolutions)."""
    row = fill_row(row, driver, data, dtypes=dtypes)
    names = ("default", SECOND)[: len(values) if offers(driver, row.tuner, "lifecycle") else 1]
    setup = draw_setup(driver, row, data, names)
    setup.configs = {name: {**setup.configs[name], **values[i]} for i, name in enumerate(names)}
    scene = build(driver, setup)
    if len(names) > 1:
        driver.set_active(scene.model, list(names))
    layer = setup.layer
    shape = data.draw(input_shapes(layer), label="input_shape")
    shape = (2, *shape[-(len(layer.kernel_size) + 1) :]) if layer.is_conv else (8, layer.in_features)
    scene.context.shapes["x"] = shape
    generator = torch.Generator().manual_seed(setup.seed + 1)
    x = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).to(getattr(torch, setup.row.dtype))
    return scene, x


def channels_last(t: Tensor, is_conv: bool) -> Tensor:
    """(positions, out): the output channel axis last (axis 1 of a batched conv output, the last axis otherwise)."""
    return (t.movedim(1, -1) if is_conv else t).reshape(-1, t.shape[1] if is_conv else t.shape[-1])


def adapter_outputs(
    scene: Scene, driver: Driver, x: Tensor, names: list[str] | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """base(x) and each active adapter's (`names`, default all) full, undropped delta op(x; ΔW_a), channels last, in
    float64: (positions, out) and (adapters, positions, out)."""
    layer = scene.setup.layer
    weight, bias = scene.tensors(driver)
    names = scene.names if names is None else names
    deltas = [delta(scene, scene.adapter(driver, n), weight) for n in names]
    base = channels_last(op(x.double(), weight, bias, layer), layer.is_conv)
    outputs = torch.stack([channels_last(op(x.double(), d, None, layer), layer.is_conv) for d in deltas])
    return base, outputs, names


def separable(full: Tensor) -> bool:
    """Whether every output channel's adapter deltas are linearly independent over the positions (well conditioned),
    so that least squares recovers each adapter's factor."""
    singular = torch.linalg.svdvals(full.permute(2, 1, 0))  # (out, min(positions, adapters))
    return singular.shape[-1] == full.shape[0] and bool((singular[:, -1] > 1e-6 * singular[:, 0]).all())


@pytest.mark.contract("LOHA-DROP-1")
@given(data=st.data())
def test_rank_dropout(row, driver, data):
    """LOHA-DROP-1: in train mode each forward draws, per adapter, m_o ~ Bernoulli(1−p) i.i.d. over output channels
    and uses ΔW[o] · m_o · out / Σ m: the factor of each adapter's delta per channel (least squares) is 0 or out/Σm,
    exactly (⟨N⟩); kept channels are binomial, and disjoint pairs of channels, of forwards and (two adapters) of
    adapters agree as independent masks do."""
    ps = [data.draw(st.sampled_from(PROBABILITIES), label=f"rank_dropout {i}") for i in range(2)]
    scene, x = loha_scene(row, driver, data, [{RANK_DROPOUT: p, MODULE_DROPOUT: 0.0} for p in ps])
    ctx, layer = scene.context, scene.setup.layer
    base, full, names = adapter_outputs(scene, driver, x)
    if len(names) > 1 and not separable(full):
        # e.g. in = 1: every adapter's channel o is a multiple of x, so two adapters' factors cannot be told apart
        driver.set_active(scene.model, names[:1])
        base, full, names = adapter_outputs(scene, driver, x, names[:1])
    out = layer.out_features
    forwards = max(20, math.ceil(FORWARDS_RANK / out))
    observed = torch.stack([channels_last(y.double(), layer.is_conv) for y in train_forwards(scene, x, forwards)])
    if not bool(torch.isfinite(observed).all()):
        what = f"train-mode outputs (rank_dropout {ps[: len(names)]})"
        replay = replayed(scene, forwards)
        fail(
            ctx,
            f"{what} have non-finite entries, but should be finite",
            Discrepancy(what, (), None, None, 0.0, **replay, kind="nonfinite"),
        )
    system = full.permute(2, 1, 0)  # (out, positions, adapters)
    rhs = (observed - base).permute(2, 1, 0)  # (out, positions, forwards)
    factors = torch.linalg.lstsq(system, rhs).solution.permute(2, 0, 1)  # (forwards, out, adapters)
    masks = factors.abs() > 0.5  # a kept channel's factor is out/Σm ≥ 1
    event(f"adapters={len(names)} out={out} forwards={forwards}")
    kept = masks.double()
    expected_factors = kept * out / kept.sum(1, keepdim=True).clamp(min=1)
    expected = base + torch.einsum("foa,apo->fpo", expected_factors, full)
    assert_close_to_oracle(
        context=ctx,
        what=f"train-mode outputs (rank_dropout {ps[: len(names)]}) vs base(x) + Σ_a op(x; ΔW_a · m · out/Σm) with "
        "the masks recovered from them",
        actual=observed,
        expected=expected,
        tol=tolerance("N", "float64"),
        scale=scale(expected),
    )
    for a, name in enumerate(names):
        p, m = ps[a], masks[..., a]
        what = f"adapter {name!r} (rank_dropout {p})"
        assert_binomial(ctx, f"{what}: kept output channels", int(m.sum()), m.numel(), 1 - p)
        q = agree_probability(p)
        pairs = out // 2 * 2
        assert_agreement(ctx, f"{what}: channels 2i and 2i+1", m[:, 0:pairs:2], m[:, 1:pairs:2], q)
        even = forwards // 2 * 2
        assert_agreement(ctx, f"{what}: forwards 2t and 2t+1", m[0:even:2], m[1:even:2], q)
    if len(names) == 2:
        assert_agreement(
            ctx, f"the masks of {names[0]!r} and {names[1]!r}", masks[..., 0], masks[..., 1], agree_probability(*ps)
        )


@pytest.mark.contract("LOHA-DROP-2")
@given(data=st.data())
def test_rank_dropout_all_dropped(row, driver, data):
    """LOHA-DROP-2 ⟨Z⟩: with every m_o = 0 (rank_dropout = 1) the adapter contributes exactly 0 in train mode: the
    output equals, bitwise, the live base layer's own output (finite, never NaN), in every dtype."""
    scene, x = loha_scene(row, driver, data, [{RANK_DROPOUT: 1.0, MODULE_DROPOUT: 0.0}], dtypes=ALL_DTYPES)
    base_layer = driver.layer_state(scene.model, KEY).base_layer
    with torch.no_grad():
        expected = base_layer(x)
    for index, y in enumerate(train_forwards(scene, x, 2)):
        what = f"train-mode output {index} with rank_dropout = 1 (vs base(x), bitwise)"
        assert_equal(scene.context, what, y, expected, observe=replayed(scene, index + 1))


@pytest.mark.contract("LOHA-DROP-3")
@given(data=st.data())
def test_module_dropout(row, driver, data):
    """LOHA-DROP-3: in train mode each forward skips each adapter independently with its probability p and otherwise
    applies it unscaled: every output is base(x) plus the full deltas of a subset of the adapters (⟨N⟩); skips are
    binomial, and disjoint pairs of forwards and (two adapters) the two adapters agree as independent draws do."""
    ps = [data.draw(st.sampled_from((*PROBABILITIES, 1.0)), label=f"module_dropout {i}") for i in range(2)]
    scene, x = loha_scene(row, driver, data, [{RANK_DROPOUT: 0.0, MODULE_DROPOUT: p} for p in ps])
    ctx, layer = scene.context, scene.setup.layer
    base, full, names = adapter_outputs(scene, driver, x)
    outputs = train_forwards(scene, x, FORWARDS_MODULE)
    observed = torch.stack([channels_last(y.double(), layer.is_conv) for y in outputs])
    combos = torch.tensor(list(itertools.product((0.0, 1.0), repeat=len(names))), dtype=torch.float64)
    candidates = (base + torch.einsum("ca,apo->cpo", combos, full)).flatten(1).unsqueeze(1)  # (C, 1, L)
    what = (
        f"train-mode output (module_dropout {ps[: len(names)]}) vs the nearest of base(x) + Σ over a subset of {names}"
    )
    shape = outputs[0].shape

    def forward(index: int, row: Tensor) -> tuple[Tensor, dict]:
        """A row of `observed` as train-mode output `index` (the inverse of `channels_last`)."""
        if layer.is_conv:
            return row.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1), replayed(scene, index + 1)
        return row.reshape(shape), replayed(scene, index + 1)

    tol = tolerance("N", "float64")
    best, unambiguous = nearest(ctx, what, observed.flatten(1), candidates, tol, forward)
    applied = combos[best][unambiguous].bool()  # (forwards, adapters)
    event(f"adapters={len(names)} p={ps[: len(names)]} decoded={float(unambiguous.double().mean()):.0%}")
    for a, name in enumerate(names):
        p, z = ps[a], applied[:, a]
        assert_binomial(
            ctx, f"forwards that applied adapter {name!r} (module_dropout {p})", int(z.sum()), z.numel(), 1 - p
        )
        even = z.numel() // 2 * 2
        assert_agreement(
            ctx,
            f"adapter {name!r} (module_dropout {p}): forwards 2t and 2t+1",
            z[0:even:2],
            z[1:even:2],
            agree_probability(p),
        )
    if len(names) == 2:
        assert_agreement(
            ctx, f"the draws of {names[0]!r} and {names[1]!r}", applied[:, 0], applied[:, 1], agree_probability(*ps)
        )
