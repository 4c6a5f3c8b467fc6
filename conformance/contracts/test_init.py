"""Family `init`: initialisation is reproducible from torch's RNG state (CORE-INIT-1), follows each tuner's documented
distributions (…-INIT-*, the oracle's `init_distributions`; ⟨Z⟩ zeros/ones exactly, ⟨P⟩ by §8's rule) with the
documented warnings (HRA-INIT-2, HRA-GS-5), and is the identity exactly where SPEC says so (…-ID-*)."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import Context, assert_close_to_oracle, assert_equal, unwarned
from conformance.assertions import fail as clause_fail
from conformance.drivers.base import Discrepancy, Driver, TunerCapabilities
from conformance.harness import (
    KEY,
    adapt_module,
    claims_of,
    clause_variants,
    optional_geometry_ok,
    seed_torch,
    usable_kinds,
    with_common_factor,
)
from conformance.rows import RowSpec
from conformance.spec.layer import Adapter, Init, Layer, op
from conformance.spec.record import TunerRecord, Variant
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance, violations
from conformance.strategies import build_base, input_shapes, layers, logical_weight, random_tensor, seeds

# §8 ⟨P⟩: bounds hold up to the parameter dtype's rounding, |s| ≤ β·(1 + 2^−p), p the significand precision.
SIGNIFICAND = {torch.float64: 53, torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}
# Variance and fourth moment of a sample in units of β: U(−1, 1) and N(0, 1).
MOMENTS = {"uniform": (1 / 3, 1 / 5), "paired_uniform": (1 / 3, 1 / 5), "normal": (1.0, 3.0)}
SAMPLES = 10_000  # §8: moments are checked on n ≥ 10⁴ samples
ADAPTS_PER_EXAMPLE = 16  # re-initialisations per drawn example; shorter pools are topped up once per row
MAX_TOP_UP = 5_000
WEIGHT_CAP = 2**17  # elements of the enlarged base weight used to gather samples

ODD_R = ("odd",)  # HRA-INIT-2: the warning says the symmetric initialisation needs an even r
GS_SYMMETRIC = ("apply_gs", "gram")  # HRA-GS-5: the warning names Gram–Schmidt


@dataclass(frozen=True)
class InitRule:
    """What an init clause speaks of: its parameters (None: all; minus `exclude`), the configs it is about (`where`)
    and the subjects a UserWarning at injection must name (`warns`, per config). Proposed as a record field."""

    params: frozenset[str] | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)
    where: Callable[[dict], bool] | None = None
    warns: Callable[[dict], tuple[str, ...]] = lambda config: ()


def _even_r(config: dict) -> bool:
    return config["r"] % 2 == 0


def _hra_identity_case(config: dict) -> bool:
    """HRA-ID-1's case: `init_weights=True`, even r, no Gram–Schmidt."""
    return bool(config["init_weights"]) and _even_r(config) and not config["apply_GS"]


def _hra_warnings(config: dict) -> tuple[str, ...]:
    """HRA-ID-2: odd r with the symmetric option warns per HRA-INIT-2; Gram–Schmidt with it per HRA-GS-5."""
    if not config["init_weights"]:
        return ()
    return GS_SYMMETRIC if _even_r(config) else ODD_R


GRALORA_A = frozenset({"gralora_A", "gralora_A_general.weight"})
GRALORA_B = frozenset({"gralora_B", "gralora_B_general.weight"})
INIT_RULES: dict[str, InitRule] = {
    "BONE-INIT-1": InitRule(),
    "BONE-INIT-2": InitRule(),
    "GRALORA-INIT-1": InitRule(params=GRALORA_A),
    "GRALORA-INIT-2": InitRule(params=GRALORA_B),
    "GRALORA-INIT-3": InitRule(params=GRALORA_B),
    "HRA-INIT-1": InitRule(where=_even_r),
    "HRA-INIT-2": InitRule(where=lambda c: not _even_r(c), warns=lambda c: ODD_R),
    "HRA-INIT-3": InitRule(),
    "HRA-GS-5": InitRule(params=frozenset(), where=_even_r, warns=lambda c: GS_SYMMETRIC),
    "IA3-INIT-1": InitRule(),
    "IA3-INIT-2": InitRule(),
    "LOHA-INIT-1": InitRule(params=frozenset({"hada_w2_b"})),
    "LOHA-INIT-2": InitRule(exclude=frozenset({"hada_w2_b"})),
    "LOHA-INIT-3": InitRule(),
}
# The identity clauses with conditions: HRA-ID-2 is about every case but HRA-ID-1's, with the warnings it names.
ID_RULES: dict[str, InitRule] = {
    "HRA-ID-1": InitRule(where=_even_r),
    "HRA-ID-2": InitRule(where=lambda c: not _hra_identity_case(c), warns=_hra_warnings),
}


# ---- shared steps (the same as test_structure's; proposed for conformance/harness.py) ----------------------------


@dataclass
class Fresh:
    """A freshly adapted layer; `warnings` holds the messages of the UserWarnings config and injection emitted."""

    layer: Layer
    variant: Variant
    config: dict
    resolved: dict
    dtype: str
    seed: int
    base: nn.Module  # an untouched copy of the base module, taken before injection
    model: nn.Module
    context: Context
    warnings: list[str]


def adapt_fresh(
    driver: Driver, row: RowSpec, data: st.DataObject, *, dtype: str, where: Callable[[dict], bool] | None = None
) -> Fresh:
    """Draw the row's open axes, a layer and a config (satisfying `where`), and inject it unperturbed."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    if row.variant is not None:
        variant = record.variant(row.variant)
    else:
        choices = [v for v in clause_variants(row.clause, record, claims) if usable_kinds(record, claims, v)]
        variant = data.draw(st.sampled_from(choices), label="variant")
    kind = row.layer_kind or data.draw(st.sampled_from(usable_kinds(record, claims, variant)), label="layer_kind")
    layer = data.draw(layers(kind).filter(lambda g: optional_geometry_ok(g, record, claims)), label="layer")
    layer = with_common_factor(data, layer)
    init = row.init or data.draw(st.sampled_from(["identity", "random"]), label="init")
    configs = record.configs(layer, variant, init)
    config = data.draw(configs.filter(where) if where is not None else configs, label="config")
    seed = data.draw(seeds, label="seed")
    base = build_base(layer, dtype, seed)
    context = Context(row.clause, row.tuner, driver.name, config, {"weight": layer.weight_shape}, dtype, seed)
    with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
        warnings.simplefilter("always")
        seed_torch(seed)  # reproducible examples: hypothesis replays a failing one
        model = adapt_module(driver, row.tuner, copy.deepcopy(base), config)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    resolved = record.resolve(config, KEY)
    return Fresh(layer, variant, config, resolved, dtype, seed, base, model.eval(), context, messages)


def assert_warned(context: Context, messages: list[str], subjects: tuple[str, ...], when: str) -> None:
    """A UserWarning naming one of `subjects` (case-insensitively, SPEC §0.1) was emitted. Proposed for
    conformance/assertions.py as `assert_warns_clause`."""
    __tracebackhide__ = True
    if not any(s.lower() in m.lower() for m in messages for s in subjects):
        clause_fail(
            context,
            f"no UserWarning naming {' or '.join(map(repr, subjects))} {when}; warnings seen: {messages}",
            unwarned(subjects, messages),
        )


def assert_bitwise(context: Context, what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """⟨Z⟩: same shape and dtype, bitwise-equal values."""
    __tracebackhide__ = True
    assert_equal(context, f"{what} shape", tuple(actual.shape), tuple(expected.shape))
    assert_equal(context, f"{what} dtype", actual.dtype, expected.dtype)
    if not torch.equal(actual, expected):
        diff = (actual.detach().double() - expected.detach().double()).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        clause_fail(
            context,
            f"{what}: {int((diff != 0).sum())} of {diff.numel()} elements differ, largest {diff.max().item():.3g} "
            f"at {where}, but should be bitwise equal",
        )


def dtype_for(data: st.DataObject, claims: TunerCapabilities) -> str:
    return data.draw(st.sampled_from(sorted(claims.dtypes)), label="dtype")


# ---- CORE-INIT-1 ------------------------------------------------------------------------------------------------


@pytest.mark.contract("CORE-INIT-1", axes=("variant",))
def test_same_rng_state_same_params(row, driver):
    """CORE-INIT-1 ⟨Z⟩: injecting the same config into identical models from the same torch RNG state gives
    bitwise-equal parameters; and initialisation draws from torch's global generator (another seed changes
    every parameter the oracle documents as random)."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)

    @given(data=st.data())
    def check(data):
        fresh = adapt_fresh(driver, row, data, dtype=dtype_for(data, claims))
        draws = []
        for rng_seed in (fresh.seed, fresh.seed, fresh.seed + 1):
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seed_torch(rng_seed)
                model = adapt_module(driver, row.tuner, copy.deepcopy(fresh.base), fresh.config)
            draws.append(driver.get_params(model, KEY, "default"))
        first, again, other = draws
        assert_equal(fresh.context, "parameter names", sorted(again), sorted(first))
        for name in sorted(first):
            assert_bitwise(fresh.context, f"{name} from the same RNG state", again[name], first[name])
        dists = record.oracle.init_distributions(fresh.resolved, fresh.layer)
        for name in sorted(n for n, d in dists.items() if d.kind in MOMENTS and n in first):
            if torch.equal(first[name], other[name]):
                clause_fail(
                    fresh.context,
                    f"{name} ({dists[name].kind}) is bitwise the same after torch.manual_seed({fresh.seed}) and "
                    f"torch.manual_seed({fresh.seed + 1}): the initialisation does not draw from torch's global RNG",
                )

    check()


# ---- distributions: …-INIT-*, HRA-GS-5 --------------------------------------------------------------------------


def sample_units(value: torch.Tensor, init: Init) -> torch.Tensor:
    """The independent samples of a parameter in units of its bound (for `paired_uniform`, the columns h_j)."""
    value = value.detach().double()
    if init.kind == "paired_uniform":
        value = value[..., 0::2]
    return (value / (init.bound if init.kind != "normal" else 1.0)).flatten()


def samples_per_init(shape: tuple[int, ...], init: Init) -> int:
    n = math.prod(shape)
    return n // 2 if init.kind == "paired_uniform" else n


def check_values(context: Context, name: str, value: torch.Tensor, init: Init) -> None:
    """⟨Z⟩ zeros/ones exactly; ⟨S⟩ every sample within β·(1 + 2^−p); paired columns equal (HRA-INIT-1)."""
    __tracebackhide__ = True
    if init.kind in ("zeros", "ones"):
        target = torch.zeros_like(value) if init.kind == "zeros" else torch.ones_like(value)
        if not torch.equal(value, target):
            off = value != target
            clause_fail(
                context,
                f"{name} has {int(off.sum())} of {value.numel()} entries other than {init.kind[:-1]}, e.g. "
                f"{value[off].flatten()[0].item():.6g}, but should be all {init.kind}",
            )
        return
    if not bool(torch.isfinite(value).all()):
        clause_fail(context, f"{name} has non-finite entries, but should be i.i.d. {init.kind}")
    if init.kind == "paired_uniform":
        left, right = value[..., 0::2], value[..., 1::2]
        if left.shape != right.shape or not torch.equal(left, right):
            clause_fail(context, f"{name}: columns 2j and 2j+1 are not equal, but U should be [h_0, h_0, h_1, h_1, …]")
    if init.kind in ("uniform", "paired_uniform"):
        limit = init.bound * (1 + 2.0 ** -SIGNIFICAND[value.dtype])
        largest = value.detach().double().abs().max().item() if value.numel() else 0.0
        if largest > limit:
            outside = int((value.detach().double().abs() > limit).sum())
            where = tuple(int(i) for i in torch.unravel_index(value.detach().double().abs().argmax(), value.shape))
            clause_fail(
                context,
                f"{name}: |sample| = {largest:.6g}, but every sample of U(±{init.bound:.6g}) should be ≤ {limit:.6g} "
                f"({outside} of {value.numel()} outside)",
                Discrepancy(f"{name}, a sample of U(±{init.bound:.6g}),", where, 0.0, value[where].item(), limit,
                            "param", KEY, name=name),
            )  # fmt: skip


def check_moments(context: Context, name: str, units: torch.Tensor, init: Init) -> None:
    """§8 ⟨P⟩ on n ≥ 10⁴ samples (in units of β): |mean| ≤ 6σ/√n (6β/√(3n) for U(±β)) and the variance within 6
    standard errors of σ² (β²/3; 1 for N(0, 1))."""
    __tracebackhide__ = True
    n = units.numel()
    var0, fourth = MOMENTS[init.kind]
    mean, var = units.mean().item(), units.var().item()
    unit = "β" if init.kind != "normal" else "1"
    bound = 6 * math.sqrt(var0 / n)
    if abs(mean) > bound:
        clause_fail(
            context,
            f"{name}: mean of {n} samples = {mean:.4g}·{unit}, but |mean| should be ≤ {bound:.4g}·{unit} ({init.kind})",
        )
    error = 6 * math.sqrt((fourth - var0**2) / n)
    if abs(var - var0) > error:
        clause_fail(
            context,
            f"{name}: variance of {n} samples = {var:.4g}·{unit}², but should be {var0:.4g}·{unit}² ± {error:.3g} "
            f"({init.kind})",
        )


def judged(rule: InitRule, dists: dict[str, Init]) -> list[str]:
    names = set(dists) if rule.params is None else rule.params & set(dists)
    return sorted(names - rule.exclude)


def enlarged(layer: Layer, resolved: dict, names: list[str], record: TunerRecord) -> Layer:
    """The layer with in or out doubled, one at a time, as long as that yields more samples per initialisation (every
    SPEC rule on sizes is a divisibility or an upper bound on r, so a config valid for a layer stays valid when in or
    out doubles; a config the oracle rejects for the bigger layer stops the growth)."""

    def per_init(g: Layer) -> int:
        """Samples per initialisation, each parameter counted up to the target."""
        try:
            dists = record.oracle.init_distributions(resolved, g)
            shapes = record.oracle.param_shapes(resolved, g)
        except ValueError:
            return -1
        return sum(min(samples_per_init(shapes[n], dists[n]), SAMPLES // 8) for n in names)

    current = per_init(layer)
    while current < len(names) * (SAMPLES // 8):
        grown = [replace(layer, in_features=2 * layer.in_features), replace(layer, out_features=2 * layer.out_features)]
        grown = [(per_init(g), g) for g in grown if math.prod(g.weight_shape) <= WEIGHT_CAP]
        best = max(grown, key=lambda pair: pair[0], default=(-1, layer))
        if best[0] <= current:
            break
        current, layer = best
    return layer


@dataclass
class Pool:
    """Samples (in units of β) that one drawn example could not bring to 10⁴, gathered over the row's examples."""

    units: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    best: dict[str, tuple[int, Layer, dict, str, int, Context]] = field(default_factory=dict)

    def add(self, name: str, units: torch.Tensor, per_init: int, source: tuple) -> None:
        self.units.setdefault(name, []).append(units)
        if name not in self.best or per_init > self.best[name][0]:
            self.best[name] = (per_init, *source)


def gather(driver: Driver, row: RowSpec, layer: Layer, config: dict, dtype: str, seed: int, context: Context,
           names: list[str], limit: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """Re-initialise `layer` from torch seeds seed, seed+1, … until every parameter in `names` has 10⁴ samples or
    `limit` initialisations were made; every sample is also checked against its bound. The base module is reused
    (its weight's values play no part in any initialisation)."""
    record = RECORDS[row.tuner]
    resolved = record.resolve(config, KEY)
    dists = record.oracle.init_distributions(resolved, layer)
    base = build_base(layer, dtype, seed)
    units: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    context = replace(context, shapes={"weight": layer.weight_shape})
    for k in range(limit):
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seed_torch(seed + k)
            params = driver.get_params(adapt_module(driver, row.tuner, base, config), KEY, "default")
        for name in names:
            check_values(context, name, params[name], dists[name])
            units[name].append(sample_units(params[name], dists[name]))
        if all(sum(u.numel() for u in units[name]) >= SAMPLES for name in names):
            break
    return {name: torch.cat(chunks) for name, chunks in units.items()}


def check_init(row: RowSpec, driver: Driver) -> None:
    """The parameters INIT_RULES names for the clause follow the oracle's `init_distributions` exactly (⟨Z⟩) or by
    §8's rule (⟨P⟩), and the clause's warnings are emitted at injection."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    rule = INIT_RULES[row.clause]
    pool = Pool()

    @given(data=st.data())
    def check(data):
        fresh = adapt_fresh(driver, row, data, dtype=dtype_for(data, claims), where=rule.where)
        subjects = rule.warns(fresh.config)
        if subjects:
            assert_warned(fresh.context, fresh.warnings, subjects, f"at injection of {fresh.config}")
        params = driver.get_params(fresh.model, KEY, "default")
        dists = record.oracle.init_distributions(fresh.resolved, fresh.layer)
        names = judged(rule, dists)
        assert_equal(fresh.context, f"parameters {names} present", sorted(set(names) - set(params)), [])
        for name in names:
            check_values(fresh.context, name, params[name], dists[name])
        random = [name for name in names if dists[name].kind in MOMENTS]
        if not random:
            return
        layer = enlarged(fresh.layer, fresh.resolved, random, record)
        gathered = gather(
            driver, row, layer, fresh.config, fresh.dtype, fresh.seed, fresh.context, random, ADAPTS_PER_EXAMPLE
        )
        big = record.oracle.init_distributions(fresh.resolved, layer)
        shapes = record.oracle.param_shapes(fresh.resolved, layer)
        for name, units in gathered.items():
            if units.numel() >= SAMPLES:
                check_moments(replace(fresh.context, shapes={"weight": layer.weight_shape}), name, units, big[name])
            else:
                source = (layer, fresh.config, fresh.dtype, fresh.seed, fresh.context)
                pool.add(name, units, samples_per_init(shapes[name], big[name]), source)

    check()
    for name, chunks in sorted(pool.units.items()):
        units = torch.cat(chunks)
        per_init, layer, config, dtype, seed, context = pool.best[name]
        if units.numel() < SAMPLES:
            limit = math.ceil((SAMPLES - units.numel()) / per_init)
            if limit > MAX_TOP_UP:
                raise RuntimeError(f"{name}: too few samples per initialisation ({per_init}) to reach {SAMPLES}")
            extra = gather(driver, row, layer, config, dtype, seed + ADAPTS_PER_EXAMPLE, context, [name], limit)
            units = torch.cat([units, extra[name]])
        dist = RECORDS[row.tuner].oracle.init_distributions(RECORDS[row.tuner].resolve(config, KEY), layer)[name]
        check_moments(replace(context, shapes={"weight": layer.weight_shape}), name, units, dist)


@pytest.mark.contract("BONE-INIT-1", axes=("variant", "init"), variants=("plain", "bat"), inits=("identity",))
def test_init_block_zeros(row, driver):
    """BONE-INIT-1 ⟨Z⟩: `init_weights=True` and `"bat"` give an all-zero block."""
    check_init(row, driver)


@pytest.mark.contract("BONE-INIT-2", axes=("variant", "init"), variants=("plain",), inits=("random",))
def test_init_block_random(row, driver):
    """BONE-INIT-2 ⟨P⟩: `init_weights=False` gives i.i.d. U(±1/√out)."""
    check_init(row, driver)


@pytest.mark.contract(
    "GRALORA-INIT-2", "HRA-INIT-1", "HRA-INIT-2", "IA3-INIT-1", "LOHA-INIT-1", "LOHA-INIT-2",
    axes=("variant", "init"), inits=("identity",),
)  # fmt: skip
def test_init_identity_option(row, driver):
    """The identity-at-init option: GRALORA-INIT-2 (B tensors zero), HRA-INIT-1 (even r: paired columns, each
    U(±√(2/r))), HRA-INIT-2 (odd r: warns, U(±1/√r)), IA3-INIT-1 (ones), LOHA-INIT-1 (`hada_w2_b` zero),
    LOHA-INIT-2 (the other tensors KU)."""
    check_init(row, driver)


@pytest.mark.contract(
    "GRALORA-INIT-3", "HRA-INIT-3", "IA3-INIT-2", "LOHA-INIT-3", axes=("variant", "init"), inits=("random",)
)
def test_init_random_option(row, driver):
    """The random option: GRALORA-INIT-3 (B tensors U(±1/√r), U(±1/√h)), HRA-INIT-3 (U(±1/√r)), IA3-INIT-2
    (N(0, 1)), LOHA-INIT-3 (every tensor KU)."""
    check_init(row, driver)


@pytest.mark.contract("GRALORA-INIT-1", axes=("variant", "init"), inits=("identity", "random"))
def test_init_either_option(row, driver):
    """GRALORA-INIT-1 ⟨P⟩: for both options `gralora_A` is U(±1/√(in/N)) and `gralora_A_general.weight`
    U(±1/√in)."""
    check_init(row, driver)


@pytest.mark.contract("HRA-GS-5", axes=("variant", "init"), variants=("gs",), inits=("identity",))
def test_gs_with_symmetric_init_warns(row, driver):
    """HRA-GS-5 ⟨S⟩: `apply_GS=True` with the symmetric initialisation (even r) warns, naming Gram–Schmidt."""
    check_init(row, driver)


# ---- identity at init: …-ID-* -----------------------------------------------------------------------------------


def nonempty_input(data: st.DataObject, fresh: Fresh) -> torch.Tensor:
    shape = data.draw(input_shapes(fresh.layer), label="input_shape")  # ordinary inputs are never empty
    fresh.context.shapes["x"] = shape
    return random_tensor(shape, fresh.dtype, fresh.seed + 1)


def documented_params(dists: dict[str, Init], shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Parameters drawn (float64, seeded) from the documented distributions themselves, not the implementation's."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, init in dists.items():
        shape = shapes[name]
        if init.kind in ("zeros", "ones"):
            out[name] = torch.zeros(shape, dtype=torch.float64) + (init.kind == "ones")
        elif init.kind == "normal":
            out[name] = torch.randn(shape, generator=generator, dtype=torch.float64)
        else:
            half = (*shape[:-1], shape[-1] // 2) if init.kind == "paired_uniform" else shape
            value = (torch.rand(half, generator=generator, dtype=torch.float64) * 2 - 1) * init.bound
            out[name] = value.repeat_interleave(2, dim=-1) if init.kind == "paired_uniform" else value
    return out


def identity_by_law(fresh: Fresh, x: torch.Tensor, expected: torch.Tensor) -> bool:
    """True when the closed form itself is the identity for this geometry and config, with parameters drawn from the
    documented distributions (e.g. HRA with d = 1 and even r: R = (−1)^r = I): no implementation can differ there."""
    record = RECORDS[fresh.context.tuner]
    dists = record.oracle.init_distributions(fresh.resolved, fresh.layer)
    params = documented_params(dists, record.oracle.param_shapes(fresh.resolved, fresh.layer), fresh.seed + 3)
    weight, bias = logical_weight(fresh.base, fresh.layer), fresh.base.bias.detach().double()
    eff_weight, eff_bias = record.oracle.effective(weight, bias, fresh.layer, [Adapter(fresh.resolved, params)])
    law = op(x.double(), eff_weight, eff_bias, fresh.layer)
    return not bool(violations(law, expected, tolerance("N", "float64"), scale(expected)).any())


def assert_not_identity(fresh: Fresh, x: torch.Tensor, y: torch.Tensor, expected: torch.Tensor, why: str) -> None:
    """Some output differs from base(x) by more than the ⟨N⟩ tolerance (float64). Examples where the closed form is
    the identity whatever the documented initialisation draws are discarded (`identity_by_law`)."""
    __tracebackhide__ = True
    if not violations(y, expected, tolerance("N", "float64"), scale(expected)).any():
        assume(not identity_by_law(fresh, x, expected))
        largest = (y.double() - expected).abs().max().item()
        clause_fail(
            fresh.context,
            f"output equals base(x) (largest difference {largest:.3g}), but {why} is documented as not the identity",
        )


def check_identity(row: RowSpec, driver: Driver, cls: str, where: Callable[[dict], bool] | None = None) -> None:
    """The identity option's output equals base(x) (⟨Z⟩ bitwise in every dtype, or ⟨N⟩); the random option's does
    not (float64, beyond ⟨N⟩). The option is the config's `init_field` (False = random)."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)

    @given(data=st.data())
    def check(data):
        dtype = dtype_for(data, claims) if row.init == "identity" else "float64"
        fresh = adapt_fresh(driver, row, data, dtype=dtype, where=where)
        x = nonempty_input(data, fresh)
        with torch.no_grad():
            y, y_base = fresh.model(x), fresh.base(x)
        weight, bias = logical_weight(fresh.base, fresh.layer), fresh.base.bias.detach().double()
        expected = op(x.double(), weight, bias, fresh.layer)
        option = f"{record.init_field}={fresh.config[record.init_field]!r}"
        if fresh.config[record.init_field] is False:
            assert_not_identity(fresh, x, y, expected, option)
        elif cls == "Z":
            assert_bitwise(fresh.context, f"output with {option} vs base(x)", y, y_base)
        else:
            tol = tolerance(cls, dtype)
            assert_close_to_oracle(
                context=fresh.context,
                what=f"output with {option}",
                actual=y,
                expected=expected,
                tol=tol,
                scale=scale(expected),
            )

    check()


@pytest.mark.contract("BONE-ID-1", axes=("variant", "init"), variants=("plain",), inits=("identity", "random"))
def test_identity_block_plain(row, driver):
    """BONE-ID-1: `init_weights=True` → output equals base(x) exactly; `False` → not the identity."""
    check_identity(row, driver, "Z")


@pytest.mark.contract("BONE-ID-1", axes=("variant", "init"), variants=("bat",), inits=("identity",))
def test_identity_block_bat(row, driver):
    """BONE-ID-1: `init_weights="bat"` → output equals base(x) exactly (BAT has no random option)."""
    check_identity(row, driver, "Z")


@pytest.mark.contract("GRALORA-ID-1", "IA3-ID-1", "LOHA-ID-1", axes=("variant", "init"), inits=("identity", "random"))
def test_identity(row, driver):
    """GRALORA-ID-1, IA3-ID-1, LOHA-ID-1 (every mode): the identity option's output is base(x) bitwise ⟨Z⟩ in every
    dtype; the random option's is not."""
    check_identity(row, driver, "Z")


@pytest.mark.contract("HRA-ID-1", axes=("variant", "init"), variants=("plain",), inits=("identity",))
def test_identity_hra(row, driver):
    """HRA-ID-1 ⟨N⟩: `init_weights=True`, even r, no Gram–Schmidt: output equals base(x) to round-off."""
    check_identity(row, driver, "N", where=ID_RULES[row.clause].where)


@pytest.mark.contract("HRA-ID-2", axes=("variant", "init"), inits=("identity", "random"))
def test_documented_non_identity(row, driver):
    """HRA-ID-2 ⟨S⟩: odd r (warning of HRA-INIT-2), `init_weights=False`, and `apply_GS=True` with any init (finite;
    the symmetric initialisation warns per HRA-GS-5) are not the identity."""
    rule = ID_RULES[row.clause]

    @given(data=st.data())
    def check(data):
        fresh = adapt_fresh(driver, row, data, dtype="float64", where=rule.where)
        subjects = rule.warns(fresh.config)
        if subjects:
            assert_warned(fresh.context, fresh.warnings, subjects, f"at injection of {fresh.config}")
        x = nonempty_input(data, fresh)
        with torch.no_grad():
            y = fresh.model(x)
        if not bool(torch.isfinite(y).all()):
            clause_fail(fresh.context, "output has non-finite entries at init, but should be finite (HRA-GS-3)")
        weight, bias = logical_weight(fresh.base, fresh.layer), fresh.base.bias.detach().double()
        assert_not_identity(fresh, x, y, op(x.double(), weight, bias, fresh.layer), str(fresh.config))

    check()
