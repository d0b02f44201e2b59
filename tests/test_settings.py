"""Settings resolved once: the method table drives the options and their checks; an EngineSettings is valid or
is not made; the plan turns the options into each room's record; what a checkpoint's fingerprint records."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from maps_interpret import methods
from maps_interpret.config import InterpretConfig, validate
from maps_interpret.errors import UsageError
from maps_interpret.settings import EngineSettings, engine_settings


def test_one_field_and_option_per_parameter_of_the_table():
    from maps_interpret.cli import build_parser

    names = [f.name for f in fields(InterpretConfig)]
    assert set(methods.PARAMETERS) <= set(names)
    options = {option for action in build_parser()._actions for option in action.option_strings}
    assert {f"--{name}" for name in methods.PARAMETERS} <= options
    method = next(action for action in build_parser()._actions if action.dest == "method")
    assert list(method.choices) == list(methods.METHODS)
    assert all(name in method.help for name in methods.METHODS)


@pytest.mark.parametrize("settings,message", [
    (dict(target=-1), "--target_node must be 0 or more, got -1"),
    (dict(target=True), "--target_node must be 0 or more, got True"),
    (dict(method="smoothgrad"), "smoothgrad needs n_samples, noise_level, seed, chunk_size"),
    (dict(method="integrated-gradients", parameters=(("n_steps", 0), ("baseline", 0.0), ("chunk_size", 0))),
     "--n_steps must be at least 1, got 0"),
    (dict(method="integrated-gradients", parameters=(("n_steps", 2.5), ("baseline", 0.0), ("chunk_size", 0))),
     "--n_steps must be an integer, got 2.5"),
    (dict(method="deconvolution"), "METHOD 'deconvolution' is not supported"),
    (dict(target_mode="label"), "target mode 'label' is not one of"),
    (dict(amp="half"), "amp 'half' is not one of"),
])
def test_an_engine_settings_record_is_valid_or_not_made(settings, message):
    with pytest.raises(ValueError, match=message):
        EngineSettings(**settings)


def test_engine_settings_from_keywords():
    settings = engine_settings("integrated-gradients", target=1, n_steps=8)
    assert settings.values == {"n_steps": 8, "baseline": 0.0, "chunk_size": 0}
    assert engine_settings("grad-cam", compat="clinicadl").values == {"level_grad_cam": None, "compat": "clinicadl"}
    assert engine_settings("smoothgrad").seeded and not engine_settings().seeded
    tunnelled = engine_settings("input-x-gradient", noise_tunnel=True, n_samples=3)
    assert tunnelled.seeded and tunnelled.values["n_samples"] == 3 and tunnelled.label == "input-x-gradient (noise tunnel)"
    assert methods.core_options(tunnelled.row, tunnelled.values, True) == (
        "input-x-gradient", {"n_samples": 3, "noise_level": 0.1, "seed": 0, "chunk_size": 0}, True)
    # Given values the method does not read are checked all the same: a value out of range is an error.
    with pytest.raises(ValueError, match="--n_samples must be at least 1"):
        engine_settings("gradients", n_samples=0)
    with pytest.raises(ValueError, match="unknown method parameter 'n_step'"):
        engine_settings("integrated-gradients", n_step=8)
    with pytest.raises(ValueError, match="--seed must be an integer, got None"):
        engine_settings("smoothgrad", seed=None)


def test_options_the_command_line_checks_are_checked_for_the_python_api_too():
    base = dict(input_maps_directory="maps", data_group="test", name="x")
    for options, message in ((dict(target_node="1"), "--target_node must be an output node (0, 1, ...), label or "
                                                    "predicted; got '1'"),
                             (dict(compat="ClinicaDL"), "--compat 'ClinicaDL' is not one of clinicadl"),
                             (dict(reader="thread"), "--reader 'thread' is not one of threads, processes"),
                             (dict(preprocess_on="gpu"), "--preprocess_on 'gpu' is not one of auto, loader, device")):
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate(InterpretConfig(**base, **options))


def plan_of(demo: Path, *options: str):
    from maps_interpret.cli import build_parser
    from maps_interpret.plan import make_plan

    # METHOD, when given, comes first in `options`: argparse takes it right after NAME.
    return make_plan(build_parser().parse_args(["maps", "test", "x", *options, "--participants_tsv",
                                                "data/test.tsv", "--caps_directory", "data/caps", "--no-gpu"]))


def test_the_plan_resolves_each_room_s_settings(demo):
    plan = plan_of(demo, "integrated-gradients", "--n_steps", "4", "--target_node", "label", "--statistics",
                   "--group_by", "diagnosis", "--noise_tunnel", "--compat", "clinicadl", "-np", "0",
                   "--batch_size", "3", "--checkpoint_every", "7")
    engine = plan.engine
    assert (engine.method, engine.target_mode, engine.group_by, engine.statistics, engine.noise_tunnel) == (
        "integrated-gradients", "given", "given", True, True)
    assert engine.values["n_steps"] == 4 and "compat" not in engine.values  # IG reads no general option
    assert (plan.data.batch_size, plan.data.n_proc, plan.data.on_device) == (3, 0, False)
    assert (plan.output.group_by, plan.output.clinicadl_means, plan.output.method) == (
        "diagnosis", True, "integrated-gradients (noise tunnel)")
    assert (plan.run.checkpoint_every, plan.run.key()) == (7, "test-x")
    assert plan.settings.options["n_steps"] == 4 and plan.settings.options["caps_directory"] == "data/caps"
    json.dumps(plan.settings.options)  # plain values: interpret.json holds them


def test_the_fingerprint_records_the_parameters_the_method_reads(demo):
    from maps_interpret.runner.checkpoints import differences, fingerprint

    gradients = fingerprint(plan_of(demo))
    assert "n_steps" not in gradients["options"] and gradients["options"]["noise_tunnel"] is False
    assert differences(gradients, fingerprint(plan_of(demo, "--n_steps", "7"))) == []  # gradients read none
    tunnelled = fingerprint(plan_of(demo, "integrated-gradients", "--noise_tunnel"))
    plain = fingerprint(plan_of(demo, "integrated-gradients"))
    assert differences(plain, tunnelled) == ["--noise_tunnel (was False, now True)"]
    assert "--n_steps (was 50, now 9)" in differences(plain, fingerprint(plan_of(demo, "integrated-gradients",
                                                                                 "--n_steps", "9")))


def test_a_version_1_checkpoint_is_read_as_one_without_a_noise_tunnel(demo, tmp_path):
    from maps_interpret.errors import MapsInterpretError
    from maps_interpret.runner.checkpoints import Checkpoint, fingerprint

    current = fingerprint(plan_of(demo))
    old = json.loads(json.dumps(current))
    del old["options"]["noise_tunnel"]
    old["options"]["n_steps"] = 50  # version 1 recorded every parameter
    path = tmp_path / "checkpoint-0.json"
    path.write_text(json.dumps({"version": 1, "world": 1, "rank": 0, "fingerprint": old,
                                "passes": {"0": {"done": 4, "state": "running", "sums": [], "generation": 1}}}))
    checkpoint = Checkpoint(tmp_path, 0, 1, current)
    assert checkpoint.load() and checkpoint.done(0) == 4
    tunnelled = Checkpoint(tmp_path, 0, 1, fingerprint(plan_of(demo, "--noise_tunnel")))
    with pytest.raises(MapsInterpretError, match=r"differs from the interrupted one in --noise_tunnel \(was False"):
        tunnelled.load()
    path.write_text(json.dumps({"version": 0, "world": 1}))
    with pytest.raises(MapsInterpretError, match="written by another version of maps-interpret"):
        Checkpoint(tmp_path, 0, 1, current).load()
