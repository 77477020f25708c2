"""A config group named on the command line is never silently overridden by the experiment.

Each group (``model``, ``data``, ``loss``, ...) sets only its own keys, and ``experiment=...`` sets keys
across groups. Hydra lets ``model=half`` on the command line win over the experiment's
``override /model: tiny``, but not over the values the experiment writes into a group: with
``experiment=demo loss=perceptual`` the demo's ``loss.style_weight`` would replace the one
``loss=perceptual`` chose, and nothing would say so. :func:`check_group_choices` stops such a run with
one line naming both sides. Keys the user sets themselves (``loss.style_weight=...``) are their choice.
Nor is a group the chosen task does not read: ``task=add_style model=half`` would train the base file's
network, whatever ``model`` says; nor a task's defining setting left to a group's default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stylenet import StylenetError

#: ``task`` option -> the groups it does not read, and why: a setting of one would change nothing.
UNUSED_GROUPS = {"add_style": {"model": "its network is task.base's, whose width and depth it keeps"},
                 "sr": {"style": "super-resolution has no style picture"}}
#: ``task`` option -> (the settings one of which the command line must name, why): what the task is for, which
#: a group's default would otherwise supply unasked.
NAMED_SETTINGS = {"add_style": (("style.image", "style"), "the picture of the style to add; the style group's "
                                "own (the experiment's) would be trained as the new style unasked")}


def check_group_choices(cfg: DictConfig, hydra: DictConfig | None = None) -> None:
    """Raise a one-line :class:`StylenetError` when the chosen experiment writes a key that a group
    option named on the command line changes (from the experiment's own choice) to another value, or
    when the command line sets a group the task does not read (:data:`UNUSED_GROUPS`).
    ``hydra``: the run's Hydra config (default: ``HydraConfig.get()``, or ``cfg.hydra`` as
    ``compose(..., return_hydra_config=True)`` leaves it)."""
    if hydra is None:
        from hydra.core.hydra_config import HydraConfig

        hydra = cfg.hydra if "hydra" in cfg else HydraConfig.get()
    check_added_keys(cfg, hydra)
    roots = config_roots(hydra)
    task = hydra.runtime.choices.get("task")
    keys = [override.lstrip("+~").partition("=")[0] for override in hydra.overrides.task]
    for key, override in zip(keys, hydra.overrides.task, strict=True):
        why = UNUSED_GROUPS.get(task, {}).get(key.partition(".")[0])
        if why:
            raise StylenetError(f"task={task} does not use {key}: {why}; drop {override}")
    needed, why = NAMED_SETTINGS.get(task, ((), ""))
    if needed and not set(needed) & set(keys):
        raise StylenetError(f"task={task} needs {needed[0]}=... on the command line: {why}")
    experiment = hydra.runtime.choices.get("experiment")
    if not experiment:
        return
    named, explicit = command_line_choices(list(hydra.overrides.task), set(hydra.runtime.choices))
    picked = experiment_choices(roots, experiment)
    baseline = {**primary_choices(roots, hydra.job.config_name), **picked}
    for group, option in named.items():  # what naming the option changes from the experiment's own choice
        chosen, default = option_values(roots, group, option), option_values(roots, group, baseline.get(group))
        final = OmegaConf.to_container(cfg[group], resolve=False) if group in cfg else {}
        # naming the default option of a group the experiment does not pick but writes into (model=transformer
        # with a preset's half-width model.channels) asks for that option's values: each one replaced clashes;
        # naming the option the experiment picks itself (sr_demo's data=shards) asks for nothing new
        same = option == baseline.get(group) and group not in picked
        clashes = [f"{group}.{key}" for key, value in chosen.items()
                   if (same or default.get(key, KeyError) != value) and lookup(final, key) != value
                   and not set_by_user(f"{group}.{key}", explicit)]
        if clashes:
            raise StylenetError(f"experiment={experiment} overrides {', '.join(clashes)} of {group}={option}: "
                                f"drop {group}={option}, or set {clashes[0]}=... yourself")


def config_roots(hydra: DictConfig) -> list[Path]:
    """The folders the run's configs were read from (``configs/``, or the wheel's ``stylenet/configs``)."""
    return [Path(source.path) for source in hydra.runtime.config_sources if source.schema == "file"]


def check_added_keys(cfg: DictConfig, hydra: DictConfig) -> None:
    """Refuse ``+key=value`` (and ``++key=value``) where nothing reads ``key``: at the top level and in
    ``style``, where no constructor's arguments catch it (``+resme=never`` quietly resumed the run it meant
    to avoid), unless an interpolation reads it (``+tag=v1 'name=${tag}_run'``). The other groups' settings
    are constructors' arguments, which refuse unknown names themselves. ``hydra``: the run's Hydra config."""
    roots, overrides = config_roots(hydra), list(hydra.overrides.task)
    # the program's own groups: hydra.runtime.choices holds those +group=option appended too (stylenet-gatys took
    # +trainer=gpu, +model=tiny, +style.size=1024, all of them read by nothing, with exit 0)
    groups = set(primary_choices(roots, hydra.job.config_name))
    top = set(read_config(roots, "", hydra.job.config_name)) - {"defaults"} | groups
    style = {key for option in sorted({path.stem for root in roots for path in (root / "style").glob("*.yaml")})
             for key in read_config(roots, "style", option)} - {"defaults"} if "style" in groups else set()
    text = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]))  # unresolved
    for override in overrides:
        if not override.startswith("+"):  # ++key: add or override, so a misspelt key is added as +key is
            continue
        key = override.lstrip("+").partition("=")[0]
        group, _, rest = key.partition(".")
        if re.search(r"\$\{\s*\.*" + re.escape(key) + r"(?![\w])", text):  # read through an interpolation
            continue
        if group not in top or (group == "style" and rest.partition(".")[0] not in style):  # +resme.mode too
            raise StylenetError(f"{override.partition('=')[0]}: no setting {key} exists to add (a typo? "
                                f"{hydra.help.app_name} --help lists every setting)")


def command_line_choices(overrides: list[str], groups: set[str]) -> tuple[dict[str, str], set[str]]:
    """Hydra's task overrides -> (``{group: option}`` the user named, the dotted keys the user set)."""
    named, explicit = {}, set()
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if "." in key:
            explicit.add(key)
        elif key in groups and key != "experiment" and value:
            named[key] = value
    return named, explicit


def set_by_user(key: str, explicit: set[str]) -> bool:
    """Whether ``key`` (``model.channels``) or a node above it (``model``) was set on the command line."""
    return any(key == set_key or key.startswith(f"{set_key}.") for set_key in explicit)


def experiment_choices(roots: list[Path], experiment: str) -> dict[str, str]:
    """``{group: option}`` an experiment picks with ``override /group: option``, those of the experiments
    it includes first (its own win, as in Hydra)."""
    defaults = read_config(roots, "experiment", experiment).get("defaults", [])
    choices: dict[str, str] = {}
    for entry in defaults:
        if isinstance(entry, str) and entry != "_self_":
            choices.update(experiment_choices(roots, entry))
    for entry in defaults:
        if isinstance(entry, dict):
            choices.update({key.removeprefix("override").strip().lstrip("/"): str(option)
                            for key, option in entry.items()})
    return choices


def primary_choices(roots: list[Path], config_name: str) -> dict[str, str]:
    """``{group: option}`` of the primary config's defaults list (``train.yaml``: ``model: transformer``)."""
    entries = read_config(roots, "", config_name).get("defaults", [])
    return {key: str(option) for entry in entries if isinstance(entry, dict) for key, option in entry.items()}


def option_values(roots: list[Path], group: str, option: str | None) -> dict[str, Any]:
    """The values a group option gives its group, with the options it extends (``half``: ``transformer``
    then its own), as dotted paths."""
    config = read_config(roots, group, option) if option else {}
    entries = config.pop("defaults", [])
    values: dict[str, Any] = {}
    for entry in [*entries, *([] if "_self_" in entries else ["_self_"])]:
        if entry == "_self_":  # as OmegaConf merges: ??? (missing) keeps a value set before it
            values.update({key: value for key, value in flatten(config).items()
                           if value != "???" or key not in values})
        elif isinstance(entry, str):
            values.update(option_values(roots, group, entry))
    return values


def read_config(roots: list[Path], group: str, option: str) -> dict[str, Any]:
    """``<group>/<option>.yaml`` from the first config folder that has it, unresolved; {} if none does."""
    for root in roots:
        path = root / group / f"{option}.yaml"  # group "": the primary config
        if path.is_file():
            return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    return {}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def lookup(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; a missing key is ``KeyError`` (never equal to a value)."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return KeyError
        tree = tree[part]
    return tree


def unresolvable_setting(cfg: DictConfig) -> str | None:
    """The first setting of ``cfg`` whose ``${...}`` does not resolve (None if all do): Hydra's
    ``instantiate`` reports such an error without the setting's name."""
    from omegaconf.errors import GrammarParseError, InterpolationResolutionError

    for key, value in flatten(OmegaConf.to_container(cfg, resolve=False)).items():
        for where in [f"{key}[{index}]" for index in range(len(value))] if isinstance(value, list) else [key]:
            try:
                OmegaConf.select(cfg, where)
            except (InterpolationResolutionError, GrammarParseError):
                return where
    return None
