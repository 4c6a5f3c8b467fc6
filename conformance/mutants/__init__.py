"""The mutant catalog: small, plausible single-point bugs made from the reference, each an importable driver.

Every entry names a driver (`module:Class`, a `MutantDriver` whose docstring states the bug), the tuner it is run
on, its kind, the contract families its targeted run is limited to, and the clauses expected to kill it (any one
of them turning a row to `fail` counts; an `error` row does not). Any of them runs as an implementation:

    tunerspec check --impl conformance.mutants.loha:SwappedFactorPairs --tuner loha

`python -m conformance.mutants` runs the full kill matrix (`conformance.mutation`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

KINDS = (
    "forward", "merge", "unmerge", "init", "shapes", "state-io", "trainability", "dtype", "conv", "multi-order",
    "dropout", "config", "safe-merge", "matching", "lifecycle",
)  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    spec: str  # "conformance.mutants.<module>:<Class>"
    tuner: str
    kind: str
    families: tuple[str, ...]  # the targeted run's contract families
    kills: tuple[str, ...]  # clause IDs whose `fail` row kills it

    @property
    def driver_class(self) -> type:
        module, _, name = self.spec.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def description(self) -> str:
        """The first line of the driver's docstring: the bug."""
        return (self.driver_class.__doc__ or "").strip().splitlines()[0]


def _m(spec: str, tuner: str, kind: str, families: str, kills: str) -> Mutant:
    return Mutant(f"conformance.mutants.{spec}", tuner, kind, tuple(families.split()), tuple(kills.split()))


CATALOG: tuple[Mutant, ...] = (
    # LoHa
    _m("loha:SwappedFactorPairs", "loha", "forward", "forward", "CORE-FWD-1 LOHA-DELTA-1 LOHA-FWD-1"),
    _m("loha:MergeScaledTwice", "loha", "merge", "merge", "LOHA-MERGE-1 CORE-FWD-9 CORE-MERGE-4 CORE-MERGE-2"),
    _m("loha:WrongFactorZeroed", "loha", "init", "init", "LOHA-INIT-1 LOHA-INIT-2 CORE-INIT-1"),
    _m("loha:RankDropoutNotRescaled", "loha", "dropout", "dropout", "LOHA-DROP-1"),
    _m("loha:EffectiveOnlyForConv2d", "loha", "shapes", "structure", "LOHA-PARAM-2 LOHA-COUNT-1 LOHA-LAYER-1"),
    _m("loha:SetScaleWithoutAlphaOverR", "loha", "forward", "forward", "LOHA-SCALE-1"),
    _m("loha:EffectiveCoreBound", "loha", "init", "init", "LOHA-INIT-2 LOHA-INIT-3"),
    _m("loha:SavesAlpha", "loha", "state-io", "files", "LOHA-SAVE-1 CORE-SAVE-1 CORE-SAVE-3"),
    _m("loha:DetachedFactor", "loha", "trainability", "grad", "LOHA-GRAD-1 CORE-GRAD-1"),
    _m("loha:RankDropoutAllDroppedNaN", "loha", "dropout", "dropout", "LOHA-DROP-2 LOHA-DROP-1"),
    _m("loha:ModuleDropoutInverted", "loha", "dropout", "dropout", "LOHA-DROP-3"),
    _m("loha:W2bAlwaysZero", "loha", "init", "init", "LOHA-INIT-3 LOHA-ID-1 CORE-INIT-1"),
    # Bone / MiSS
    _m("bone:RemainderColumnsDropped", "bone", "forward", "forward", "BONE-FWD-2 BONE-FWD-1 CORE-FWD-1"),
    _m("bone:BlockNotTransposed", "miss", "merge", "merge", "BONE-MERGE-1 CORE-FWD-9 CORE-MERGE-4 CORE-MERGE-2"),
    _m("bone:BatWithoutAddedBlock", "bone", "forward", "forward", "BONE-BAT-1 CORE-FWD-1"),
    _m("bone:BatInverseBeforeSubtracting", "bone", "unmerge", "unmerge", "BONE-BAT-3 CORE-MERGE-6 CORE-MERGE-5"),
    _m("bone:RandomInitBoundFromR", "miss", "init", "init", "BONE-INIT-2"),
    _m("bone:BatWeightWithoutGrad", "bone", "trainability", "grad", "BONE-BAT-5 CORE-GRAD-1"),
    _m("bone:BatBlockInitIdentity", "bone", "init", "init", "BONE-INIT-1 BONE-ID-1"),
    _m("bone:MiniExpandedByInterleave", "miss", "forward", "forward", "MISS-MINI-2 MISS-MINI-3 CORE-FWD-1"),
    # HRA
    _m("hra:ReflectionsReversed", "hra", "forward", "forward", "HRA-R-1 HRA-FWD-1 CORE-FWD-1"),
    _m("hra:GramSchmidtNotNormalised", "hra", "forward", "forward", "HRA-GS-1 HRA-GS-2 CORE-FWD-1"),
    _m("hra:MergeTransposes", "hra", "merge", "merge", "HRA-MERGE-1 CORE-FWD-9 CORE-MERGE-4 CORE-MERGE-2"),
    _m("hra:UnmergeWithoutTranspose", "hra", "unmerge", "unmerge", "HRA-MERGE-2 CORE-MERGE-6 CORE-MERGE-5"),
    _m("hra:SymmetricInitTiled", "hra", "init", "init", "HRA-INIT-1 HRA-ID-1"),
    _m("hra:ZeroNormColumnsUnchecked", "hra", "forward", "forward", "HRA-R-3"),
    _m("hra:RandomInitBoundFromD", "hra", "init", "init", "HRA-INIT-3"),
    _m("hra:OddRWithoutWarning", "hra", "init", "init", "HRA-INIT-2"),
    _m("hra:GramSchmidtSymmetricInitSilent", "hra", "init", "init", "HRA-GS-5"),
    _m("hra:RotationInFloat32", "hra", "dtype", "dtype", "HRA-DTYPE-1 CORE-DTYPE-4 CORE-DTYPE-2"),
    # (IA)³
    _m("ia3:BiasAddedAfterScaling", "ia3", "forward", "forward", "IA3-FWD-1 CORE-FWD-1"),
    _m("ia3:MergeLeavesBias", "ia3", "merge", "merge", "IA3-MERGE-1 CORE-FWD-9 CORE-MERGE-4 CORE-MERGE-2"),
    _m("ia3:UnmergeWithoutWarning", "ia3", "unmerge", "unmerge", "IA3-MERGE-3"),
    _m("ia3:RandomInitUniform", "ia3", "init", "init", "IA3-INIT-2"),
    _m("ia3:GroupedMergeFirstGroup", "ia3", "conv", "merge", "IA3-MERGE-1 CORE-FWD-9 CORE-MERGE-4 CORE-MERGE-2"),
    _m("ia3:VectorsSummed", "ia3", "multi-order", "multi", "IA3-MULTI-1"),
    _m("ia3:SafeMergeIgnoresBias", "ia3", "safe-merge", "safe_merge", "IA3-MERGE-6 CORE-MERGE-7"),
    # GraLoRA
    _m("gralora:ScalingIgnoresHybrid", "gralora", "forward", "forward", "GRALORA-FWD-1 CORE-FWD-1 GRALORA-PARAM-2"),
    _m(
        "gralora:MergeBlocksTransposed",
        "gralora",
        "merge",
        "merge",
        "GRALORA-MERGE-1 CORE-FWD-9 CORE-MERGE-4 CORE-MERGE-2",
    ),
    _m("gralora:RandomBBoundFromBlock", "gralora", "init", "init", "GRALORA-INIT-3"),
    _m("gralora:HybridAlwaysCreated", "gralora", "shapes", "structure", "GRALORA-PARAM-1 GRALORA-LAYER-1"),
    _m("gralora:DropoutNotInverted", "gralora", "dropout", "dropout", "CORE-DROP-2 GRALORA-DROP-1"),
    _m("gralora:DropoutInEvalMode", "gralora", "dropout", "dropout", "CORE-DROP-1"),
    _m("gralora:ABoundFromFullIn", "gralora", "init", "init", "GRALORA-INIT-1"),
    _m("gralora:HybridKeysWithoutWeight", "gralora", "state-io", "files", "GRALORA-SAVE-1 CORE-SAVE-1 CORE-SAVE-2"),
    # shared machinery
    _m("core:FifoUnmerge", "hra", "unmerge", "unmerge", "CORE-MERGE-5 CORE-MERGE-6 HRA-MERGE-2"),
    _m("core:SafeMergeChecksAfterWriting", "loha", "safe-merge", "safe_merge", "CORE-MERGE-7 CORE-MERGE-9"),
    _m("core:SubstringAdapterParameters", "loha", "state-io", "files", "CORE-SAVE-3"),
    _m("core:AutocastIgnored", "gralora", "dtype", "dtype", "CORE-DTYPE-1"),
    _m("core:NewAdapterTrainable", "bone", "trainability", "lifecycle", "CORE-LIFE-2 CORE-TRAIN-2"),
    _m("core:UnwrapToOriginal", "ia3", "state-io", "lifecycle", "CORE-MTS-2"),
    _m("core:UnloadKeepsMerged", "loha", "merge", "lifecycle", "CORE-MERGE-13"),
    _m("core:DisableKeepsMerged", "gralora", "state-io", "disable", "CORE-LIFE-6"),
    _m("core:MergeNoneMergesAll", "loha", "merge", "merge", "CORE-MERGE-1 CORE-MERGE-12"),
    _m("core:SavedConfigTrainable", "hra", "state-io", "files", "CORE-SAVE-4"),
    _m("core:ConvDilationIgnored", "hra", "conv", "forward", "HRA-FWD-2 CORE-FWD-1"),
    _m("core:AdapterNameInSavedKeys", "hra", "state-io", "files", "HRA-SAVE-1 CORE-SAVE-1 CORE-SAVE-2"),
    _m("core:AdapterNameInSavedKeys", "ia3", "state-io", "files", "IA3-SAVE-1 CORE-SAVE-1 CORE-SAVE-2"),
    _m("core:AdapterNameInSavedKeys", "bone", "state-io", "files", "BONE-SAVE-1 CORE-SAVE-1 CORE-SAVE-2"),
    _m("core:AdapterNameInSavedKeys", "miss", "state-io", "files", "MISS-SAVE-1 CORE-SAVE-1 CORE-SAVE-2"),
    _m("core:MergeReplacesParameter", "ia3", "merge", "merge", "CORE-MERGE-10"),
    _m("core:MergedListNewestFirst", "loha", "merge", "merge", "CORE-MERGE-3 CORE-MERGE-1"),
    _m("core:MergeOrderReversed", "bone", "multi-order", "merge", "BONE-BAT-2 CORE-MERGE-4 CORE-MERGE-3 CORE-MERGE-1"),
    _m("core:BiasOnlyTrainsAll", "gralora", "trainability", "lifecycle", "CORE-BIAS-2 CORE-TRAIN-1 CORE-TRAIN-6"),
    _m("core:DisableWithoutBiasWarning", "hra", "lifecycle", "disable", "CORE-BIAS-4"),
    _m("core:DisableNotRestoredOnError", "bone", "lifecycle", "disable", "CORE-LIFE-7"),
    _m("core:DeleteUnknownSilently", "gralora", "lifecycle", "lifecycle", "CORE-LIFE-8"),
    _m("core:DeletingLastActiveLeavesNone", "ia3", "lifecycle", "lifecycle", "CORE-LIFE-10"),
    _m("core:SetAdapterSortsNames", "hra", "multi-order", "lifecycle", "CORE-LIFE-4"),
    _m("core:SetAdapterKeepsMerged", "loha", "lifecycle", "lifecycle", "CORE-LIFE-5"),
    _m("core:InferenceModeIgnored", "miss", "trainability", "lifecycle", "CORE-TRAIN-3 CORE-LIFE-4"),
    _m("core:SetAdapterKeepsOldTrainable", "gralora", "trainability", "lifecycle", "CORE-TRAIN-2 CORE-LIFE-4"),
    _m("core:OutputInAdapterDtype", "gralora", "dtype", "dtype", "CORE-FWD-8 GRALORA-DTYPE-1 CORE-DTYPE-2"),
    _m("core:OutputInAdapterDtype", "ia3", "dtype", "dtype", "CORE-FWD-8 IA3-DTYPE-1 CORE-DTYPE-2"),
    _m("core:OutputInAdapterDtype", "loha", "dtype", "dtype", "CORE-FWD-8 LOHA-DTYPE-1 CORE-DTYPE-2"),
    _m("core:ActiveOrderReversed", "hra", "multi-order", "multi", "HRA-MULTI-1"),
    _m("core:ActiveOrderReversed", "bone", "multi-order", "multi", "BONE-MULTI-2"),
    _m("core:OnlyFirstActiveAdapter", "loha", "multi-order", "multi", "LOHA-MULTI-1"),
    _m("core:OnlyFirstActiveAdapter", "gralora", "multi-order", "multi", "GRALORA-MULTI-1"),
    _m("core:OnlyFirstActiveAdapter", "bone", "multi-order", "multi", "BONE-MULTI-1 BONE-MULTI-2"),
    _m("core:NoActiveFallsBackToAll", "ia3", "forward", "forward", "CORE-FWD-5"),
    _m("core:LoadAdapterActivates", "loha", "state-io", "files", "CORE-SAVE-8"),
    _m("core:DeleteLeavesSubModules", "gralora", "lifecycle", "lifecycle", "CORE-LIFE-9"),
    _m("core:InputScaledInPlace", "ia3", "forward", "forward", "CORE-FWD-6 CORE-FWD-1"),
    _m("core:InFeaturesPerGroup", "hra", "conv", "structure", "CORE-INJ-3"),
    _m("core:DefaultAdapterNamedAdapter", "ia3", "lifecycle", "lifecycle", "CORE-LIFE-1"),
    # targeting
    _m("matching:StringTargetPrefixMatch", "loha", "matching", "matching", "CORE-MATCH-1"),
    _m("matching:ListTargetWithoutDotBoundary", "hra", "matching", "matching", "CORE-MATCH-2"),
    _m("matching:ModulesToSaveBySubstring", "ia3", "matching", "matching", "CORE-MATCH-4"),
    _m("matching:LayerIndexAnySegment", "bone", "matching", "matching", "CORE-MATCH-7 CORE-MATCH-6"),
    _m("matching:ExcludeBySubstring", "loha", "matching", "matching", "CORE-MATCH-3"),
    _m("matching:LayerFilterOnExactKeys", "miss", "matching", "matching", "CORE-MATCH-6"),
    # configs
    _m("configs:BoneAcceptsMini", "bone", "config", "config", "BONE-CFG-2 CORE-CFG-4"),
    _m("configs:ListFieldsKeptAsLists", "gralora", "config", "config", "CORE-CFG-3 GRALORA-CFG-1 CORE-CFG-8"),
    _m("configs:HraLayerFiltersUnchecked", "hra", "config", "config", "HRA-CFG-2 CORE-CFG-5 CORE-CFG-4"),
    _m("configs:LohaAlphaDefault16", "loha", "config", "config", "LOHA-CFG-1"),
    _m("configs:TaskTypeUnchecked", "loha", "config", "config", "CORE-CFG-2"),
    _m("configs:HraApplyGsDefaultTrue", "hra", "config", "config", "HRA-CFG-1"),
    _m("configs:Ia3FeedforwardSubsetUnchecked", "ia3", "config", "config", "IA3-CFG-2 CORE-CFG-4"),
    # config validation
    _m("configs:RevisionDefaultMain", "gralora", "config", "config", "CORE-CFG-1 CORE-CFG-8"),
    _m("configs:ProbabilityAboveOneAccepted", "loha", "config", "config", "CORE-CFG-6 LOHA-CFG-2 CORE-CFG-4"),
    _m("configs:ProbabilityAboveOneAccepted", "gralora", "config", "config", "GRALORA-CFG-4 CORE-CFG-6 CORE-CFG-4"),
    _m("configs:LoadedVersionRestamped", "hra", "config", "config", "CORE-CFG-7"),
    _m("configs:PeftTypeIgnoredOnLoad", "ia3", "config", "config", "CORE-CFG-9"),
    _m("configs:BoneRDefault8", "bone", "config", "config", "BONE-CFG-1 CORE-CFG-8"),
    _m("configs:BoneDeprecationPending", "bone", "config", "config", "BONE-CFG-4"),
    _m("configs:BlockRankBelowInFeatures", "bone", "config", "config", "BONE-CFG-5 CORE-CFG-5 BONE-CFG-2 BONE-CFG-3"),
    _m("configs:MissWarnsLikeBone", "miss", "config", "config", "MISS-CFG-1"),
    _m("configs:MiniOutNotDivisible", "miss", "config", "config", "MISS-CFG-3 CORE-CFG-4"),
    _m("configs:GraloraValidatedAtInjection", "gralora", "config", "config", "GRALORA-CFG-2 GRALORA-CFG-3"),
    _m("configs:RankBoundedByInFeatures", "gralora", "config", "config", "GRALORA-CFG-5 GRALORA-CFG-3"),
    _m("configs:RankBoundedByInFeatures", "hra", "config", "config", "HRA-CFG-3"),
    _m("configs:Ia3HasBias", "ia3", "config", "config", "IA3-CFG-1 CORE-CFG-7 CORE-CFG-9"),
    _m("configs:Ia3UnknownFeedforwardAsNone", "ia3", "config", "config", "IA3-CFG-3"),
    _m("configs:LohaPatternWithoutLayers", "loha", "config", "config", "LOHA-CFG-2 CORE-CFG-4"),
    _m("configs:LohaPatternRankUnchecked", "loha", "config", "config", "LOHA-CFG-3 CORE-CFG-4"),
    # structure: injection, layer support, parameter shapes and counts
    _m("structure:WrapsCopyOfBase", "ia3", "shapes", "structure", "CORE-INJ-1"),
    _m("structure:UnsupportedKindNotImplemented", "gralora", "shapes", "structure", "CORE-INJ-2 GRALORA-LAYER-1"),
    _m("structure:KindCheckedAfterSwap", "hra", "shapes", "structure", "HRA-LAYER-3 CORE-INJ-2"),
    _m("structure:ConvolutionsAccepted", "bone", "shapes", "structure", "BONE-LAYER-3 CORE-INJ-2"),
    _m("structure:Conv3dMissing", "ia3", "shapes", "structure", "IA3-LAYER-1 CORE-INJ-1"),
    _m("structure:LeadingDimsFlattened", "bone", "forward", "structure", "BONE-LAYER-1"),
    _m("structure:PlainBlockTransposed", "bone", "shapes", "structure", "BONE-PARAM-1 BONE-LAYER-1"),
    _m("structure:BatBlockInPlainLayout", "bone", "shapes", "structure", "BONE-PARAM-2 BONE-LAYER-1"),
    _m("structure:MiniBlockRandom", "miss", "init", "structure", "MISS-MINI-1"),
    _m("structure:FanInFromInFeatures", "hra", "shapes", "structure", "HRA-PARAM-1 HRA-COUNT-1 HRA-LAYER-1"),
    _m("structure:VectorFlat", "ia3", "shapes", "structure", "IA3-PARAM-1 IA3-LAYER-1"),
    _m("structure:FlatAFactorsTransposed", "loha", "shapes", "structure", "LOHA-PARAM-1 LOHA-LAYER-1"),
    _m("structure:BatIdentityParameter", "bone", "shapes", "structure", "BONE-COUNT-1"),
    _m("structure:BatIdentityParameter", "miss", "shapes", "structure", "MISS-COUNT-1 BONE-COUNT-1"),
    _m("structure:HybridWithBias", "gralora", "shapes", "structure", "GRALORA-COUNT-1 GRALORA-PARAM-2 GRALORA-LAYER-2"),
    _m("structure:VectorSidesSwapped", "ia3", "shapes", "structure", "IA3-COUNT-1 IA3-PARAM-1 IA3-LAYER-1"),
    # forward edge cases, init, gradients, dtype and device, merge, unmerge, safe merge, weighted adapters
    _m("gralora:DeltaShapedAsBatchAndTokens", "gralora", "forward", "forward", "CORE-FWD-2 GRALORA-FWD-4 CORE-FWD-1"),
    _m("ia3:ConvScaledByStoredVector", "ia3", "shapes", "forward", "CORE-FWD-4 CORE-FWD-1"),
    _m("bone:PlainWeightCachedAtCreation", "bone", "forward", "forward", "BONE-FWD-3"),
    _m("bone:MiniRemainderColumnsDropped", "miss", "forward", "forward", "MISS-MINI-3 MISS-MINI-2 CORE-FWD-1"),
    _m("ia3:FeedforwardScaledInputUnused", "ia3", "forward", "forward", "IA3-FWD-2 CORE-FWD-1"),
    _m("core:BaseWeightFollowsAdapterFlag", "hra", "trainability", "grad", "CORE-GRAD-2"),
    _m("gralora:HybridBNotZeroed", "gralora", "init", "init", "GRALORA-INIT-2"),
    _m("ia3:FeedforwardInitRandom", "ia3", "init", "init", "IA3-INIT-1"),
    _m("core:AdaptersInPlainDict", "ia3", "dtype", "device", "CORE-DTYPE-5"),
    _m("core:MergedLayerAppliesUnmerged", "loha", "merge", "merge", "CORE-FWD-9"),
    _m("ia3:WeightedAdapterProduct", "ia3", "multi-order", "multi", "IA3-WADD-1"),
    _m("core:SafeMergeRoundsDeltaFirst", "loha", "safe-merge", "safe_merge", "CORE-MERGE-8"),
    _m("ia3:UnmergeChecksNanOnly", "ia3", "unmerge", "unmerge", "IA3-MERGE-5"),
    # lifecycle, bias, matching and Bone → MiSS conversion
    _m("lifecycle:ExistingNameReplaced", "ia3", "lifecycle", "lifecycle", "CORE-LIFE-3"),
    _m("lifecycle:InvalidBiasValueError", "miss", "config", "lifecycle", "CORE-BIAS-1"),
    _m("lifecycle:BiasCheckedOnFirstAdapter", "hra", "lifecycle", "lifecycle", "CORE-BIAS-3"),
    _m("matching:SeqClsHeadByClassifierName", "loha", "matching", "matching", "CORE-MATCH-5"),
    _m("matching:UnsupportedDefaultsSkipped", "ia3", "matching", "matching", "CORE-DEF-2"),
    _m("matching:AllLinearCaseSensitive", "hra", "matching", "matching", "CORE-MATCH-5"),
    _m("conversion:BoneToMissKeysNotRenamed", "miss", "state-io", "interchange", "MISS-CONV-1 MISS-CONV-2"),
    _m("conversion:MissToBoneDropoutDroppedSilently", "miss", "state-io", "interchange", "MISS-CONV-2"),
    _m("conversion:BoneCheckpointUnknownType", "miss", "state-io", "interchange", "MISS-CONV-3"),
)
