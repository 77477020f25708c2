"""A group named on the command line is never silently overridden by an experiment (configs/experiment/).

The truth here is Hydra's own composition: what naming ``group=option`` changes without the experiment
(against the experiment's own choice of that group) must survive with the experiment, or
:func:`stylenet.config_check.check_group_choices` must stop the run with one line naming the option.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from stylenet import StylenetError
from stylenet.cli.train import config_dir
from stylenet.config_check import NAMED_SETTINGS, check_group_choices, flatten, unresolvable_setting
from tests.helpers import console_script

CONFIGS = Path(config_dir())
EXPERIMENTS = sorted(path.stem for path in (CONFIGS / "experiment").glob("*.yaml"))
GROUPS = sorted(path.name for path in CONFIGS.iterdir() if path.is_dir() and path.name not in ("experiment", "hydra"))


@pytest.fixture(scope="module")
def hydra_configs() -> Iterator[None]:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        yield


@cache  # (the configs never change during a test session; composing is most of this module's time)
def train_config(*overrides: str) -> DictConfig:
    return compose("train", overrides=list(overrides), return_hydra_config=True)


def leaves(cfg: DictConfig, group: str) -> dict:
    return flatten(OmegaConf.to_container(cfg[group], resolve=False))


def touched_groups(experiment: str) -> list[str]:
    """The groups an experiment picks an option of, or writes keys into, as Hydra composes them."""
    plain, chosen = train_config(), train_config(f"experiment={experiment}")
    return [group for group in GROUPS if plain.hydra.runtime.choices[group] != chosen.hydra.runtime.choices[group]
            or leaves(plain, group) != leaves(chosen, group)]


@pytest.mark.usefixtures("hydra_configs")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_naming_another_option_of_a_touched_group_wins_or_stops(experiment: str) -> None:
    own = train_config(f"experiment={experiment}").hydra.runtime.choices
    for group in touched_groups(experiment):
        reference = leaves(train_config(f"{group}={own[group]}"), group)
        for option in sorted(path.stem for path in (CONFIGS / group).glob("*.yaml")):
            if option == own[group]:
                continue
            alone = leaves(train_config(f"{group}={option}"), group)
            named = [f"{NAMED_SETTINGS[option][0][0]}=x.jpg"] if group == "task" and option in NAMED_SETTINGS else []
            both_cfg = train_config(f"experiment={experiment}", f"{group}={option}", *named)
            both = leaves(both_cfg, group)
            changed = [key for key, value in alone.items() if reference.get(key, KeyError) != value]
            wins = all(both.get(key, KeyError) == alone[key] for key in changed)
            try:
                check_group_choices(both_cfg)
            except StylenetError as err:
                assert not wins, f"{group}={option}: a false alarm: {err}"
                assert "\n" not in str(err) and f"{group}={option}" in str(err)
            else:
                assert wins, f"experiment={experiment} {group}={option} silently overrides {changed}"


@pytest.mark.usefixtures("hydra_configs")
def test_smoke_with_the_half_width_network_trains_the_half_width_network() -> None:
    cfg = train_config("experiment=smoke", "model=half")
    check_group_choices(cfg)
    assert (cfg.model.channels, cfg.model.residual_blocks) == (16, 5)  # configs/model/half.yaml over transformer
    assert (cfg.data.image_size, cfg.trainer.max_steps) == (64, 20)  # the rest of the smoke run stays


@pytest.mark.usefixtures("hydra_configs")
def test_a_clash_stops_with_one_line_and_a_set_key_is_the_users_choice() -> None:
    clash = train_config("experiment=demo", "loss=perceptual")  # demo's weights are for loss=offline
    with pytest.raises(StylenetError, match=r"^experiment=demo overrides loss.style_weight, loss.tv_weight of "
                                            r"loss=perceptual: drop loss=perceptual"):
        check_group_choices(clash)
    check_group_choices(train_config("experiment=demo", "loss=perceptual", "loss.style_weight=5",
                                     "loss.tv_weight=2"))
    # naming the option the experiment itself uses asks for its values too: the preset's half width is a clash
    with pytest.raises(StylenetError, match=r"^experiment=johnson2016_candy overrides model.channels of "
                                            r"model=transformer: drop model=transformer"):
        check_group_choices(train_config("experiment=johnson2016_candy", "model=transformer"))
    check_group_choices(train_config("experiment=demo", "model=transformer"))  # the README's paper-width demo
    check_group_choices(train_config("experiment=demo", "model=half"))  # demo's own choice; it writes no model key
    check_group_choices(train_config("experiment=sr_demo", "data=shards"))  # its own choice, with its own values


@pytest.mark.usefixtures("hydra_configs")
def test_a_group_the_task_does_not_read_stops_with_one_line() -> None:
    """task=add_style trains the norms of its base file's network: model=half trained the base's width."""
    for override in ("model=half", "model.channels=16", "+model.extra=1"):
        with pytest.raises(StylenetError) as err:
            check_group_choices(train_config("experiment=smoke", "task=add_style", "task.base=m.safetensors", override))
        key = override.lstrip("+").partition("=")[0]
        assert str(err.value) == (f"task=add_style does not use {key}: its network is task.base's, whose width and "
                                  f"depth it keeps; drop {override}")
    check_group_choices(train_config("experiment=smoke", "task=add_style", "task.base=m.safetensors",
                                     "style.image=new.jpg"))
    check_group_choices(train_config("experiment=smoke", "model=half"))  # the style task reads it
    for override in ("style=multi", "style.image=paint.png"):  # super-resolution: set and quietly ignored
        with pytest.raises(StylenetError) as err:
            check_group_choices(train_config("experiment=sr_smoke", override))
        assert str(err.value) == (f"task=sr does not use {override.partition('=')[0]}: super-resolution has no style "
                                  f"picture; drop {override}")


@pytest.mark.usefixtures("hydra_configs")
def test_a_style_to_add_is_named_not_taken_from_the_style_groups_default() -> None:
    """task=add_style without style.image trained the experiment's picture (demo:ihc) as the new style,
    or blamed task.style_name when the base already held it."""
    with pytest.raises(StylenetError) as err:
        check_group_choices(train_config("experiment=smoke", "task=add_style", "task.base=m.safetensors"))
    assert str(err.value) == ("task=add_style needs style.image=... on the command line: the picture of the style "
                              "to add; the style group's own (the experiment's) would be trained as the new style "
                              "unasked")


def test_the_training_cli_reports_a_clash_as_one_line(tmp_path: Path) -> None:
    result = subprocess.run([*console_script("stylenet-train"), "experiment=demo", "loss=perceptual",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if "error" in line] == [
        "stylenet-train: error: experiment=demo overrides loss.style_weight, loss.tv_weight of loss=perceptual: "
        "drop loss=perceptual, or set loss.style_weight=... yourself"]


@pytest.mark.usefixtures("hydra_configs")
@pytest.mark.parametrize("trainer", ["ddp", "ddp_cpu"])
def test_ddp_presets_do_not_broadcast_the_constant_buffers_every_step(trainer: str) -> None:
    """The loss network and the Grams are buffers: DDP's default would send them before every step."""
    from hydra.utils import instantiate
    from pytorch_lightning.strategies import DDPStrategy

    strategy = instantiate(train_config(f"trainer={trainer}").trainer.strategy)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {"broadcast_buffers": False}


def test_the_setting_whose_interpolation_fails_is_found_in_lists_too() -> None:
    """Hydra's instantiate reports an unresolvable ``${...}`` without its setting's name."""
    cfg = OmegaConf.create({"name": "n", "style": {"size": 8, "images": ["a.jpg", "${oops}"]}})
    assert unresolvable_setting(cfg) == "style.images[1]"
    assert unresolvable_setting(OmegaConf.create({"data": {"batch_size": "${oops}"}})) == "data.batch_size"
    assert unresolvable_setting(OmegaConf.create({"data": {"batch_size": "${name}"}, "name": 4})) is None


@pytest.mark.usefixtures("hydra_configs")
def test_an_added_key_that_nothing_reads_is_refused() -> None:
    """+key at the top level or in style is no constructor's argument: a typo there was silently kept
    (+resme=never resumed the run it meant to avoid); keys that exist or an interpolation reads, and the
    other groups', pass here."""
    for override, key in (("+resme=never", "resme"), ("+style.bogus=1", "style.bogus"), ("++resme=never", "resme"),
                          ("+resme.mode=never", "resme.mode")):  # under no setting at all
        with pytest.raises(StylenetError, match=f"^{re.escape(override.partition('=')[0])}: no setting {key} exists "):
            check_group_choices(train_config("experiment=smoke", override))
    check_group_choices(train_config("experiment=smoke", "++resume=never", "++style.size=64"))  # ++: set if there
    check_group_choices(train_config("experiment=smoke", "+trainer.gradient_clip_val=1"))
    check_group_choices(train_config("experiment=smoke", "+tag=v1", "name=${tag}_run", "+style.root=/art",
                                     "style.image=${style.root}/a.jpg"))  # helper values an interpolation reads
    check_group_choices(train_config("style=multi", "+style.image=demo:gravel"))  # refused later, by its own error
