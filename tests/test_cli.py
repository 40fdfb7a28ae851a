"""The `korasr` command as a user runs it."""

from __future__ import annotations

import subprocess

from tests.conftest import korasr_cmd


def test_normalize_writes_one_line_per_input_line():
    raw = "o/ (3시)/(세 시)에 보자.\nb/ n/\n()/) 그래\r\n어/ 저+ 저는 club/ 가요?\n"
    proc = subprocess.run(korasr_cmd("normalize"), input=raw, capture_output=True, text=True, check=True)
    assert proc.stdout == "3시에 보자\n\n\n어 저 저는 club 가요\n"
    assert "line 3: dual pair without its pronunciation side" in proc.stderr
    proc = subprocess.run(
        korasr_cmd("normalize", "--form", "phonetic", "--disfluency", "fl", "--unk", "[unk]"),
        input="(3시)/(세 시)에 u/ 어/ 보자\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == "세 시에 [unk] 보자\n"


def test_prepare_errors_name_the_path_and_the_expected_tree(tmp_path):
    proc = subprocess.run(
        korasr_cmd("prepare", "kspon", "--root", str(tmp_path), "--out", str(tmp_path / "m")),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"{tmp_path}: no KsponSpeech_scripts/ or scripts/ folder" in proc.stderr
    assert "KsponSpeech_eval/eval_clean" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_imports_neither_torch_nor_nemo():
    code = "import sys, korasr.cli, korasr.data.kspon, korasr.data.sample_corpus; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nemo', 'lightning')))"
    out = subprocess.run(
        [korasr_cmd()[0].replace("korasr", "python"), "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_numeric_arguments_are_bounded_with_clear_errors(tmp_path):
    """`--chunk-seconds 0` used to loop forever and a negative value read the whole file."""
    cases = [
        (["transcribe", "--model", str(tmp_path), "--chunk-seconds", "0", "a.wav"], "--chunk-seconds: 0 is out of range (4 to 3600)"),
        (["transcribe", "--model", str(tmp_path), "--chunk-seconds", "-5", "a.wav"], "out of range"),
        (["transcribe", "--model", str(tmp_path), "--chunk-seconds", "nan", "a.wav"], "'nan' is not a finite number"),
        (["transcribe", "--model", str(tmp_path), "--batch-size", "0", "a.wav"], "--batch-size: 0 is out of range"),
        (["serve", "--model", str(tmp_path), "--queue-size", "0"], "--queue-size: 0 is out of range (1 to 4096)"),
        (["serve", "--model", str(tmp_path), "--max-audio-seconds", "inf"], "not a finite number"),
        (["serve", "--model", str(tmp_path), "--port", "70000"], "--port: 70000 is out of range"),
        (["serve", "--model", str(tmp_path), "--max-upload-mb", "x"], "'x' is not a number"),
        (["prepare", "kspon", "--root", str(tmp_path), "--jobs", "0"], "--jobs: 0 is out of range"),
    ]  # fmt: skip
    for args, message in cases:
        proc = subprocess.run(korasr_cmd(*args), capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_serve_config_is_bounded_and_reaches_worker_processes_whole(tmp_path, monkeypatch):
    import pytest

    from korasr.serve.config import ENV, ServeConfig

    config = ServeConfig(model=tmp_path, precision="int8", threads=2, queue_size=3, chunk_seconds=20,
                         batch_seconds=40, upload_timeout_s=9, public_docs=True, api_key="secret")  # fmt: skip
    monkeypatch.setenv(ENV, config.to_env())
    assert "secret" not in config.to_env()  # the key travels in KORASR_API_KEY, not in the config
    monkeypatch.setenv("KORASR_API_KEY", "secret")
    assert ServeConfig.from_env() == config  # --workers N: every option, precision and threads included
    with pytest.raises(ValueError, match="batch_seconds 10: from chunk_seconds"):
        ServeConfig(model=tmp_path, chunk_seconds=20, batch_seconds=10)
    with pytest.raises(ValueError, match="precision 'int4'"):
        ServeConfig(model=tmp_path, precision="int4")


# --- korasr serve's settings: one schema for the flags, the variables, the docs and the errors ---------------------


def _outside(s, key: str):  # type: ignore[no-untyped-def]
    """A value just past one bound of a setting, in the field's unit."""
    bound = s.bounds[key]
    step = 1 if s.kind is int else max(abs(bound) * 1e-6, 1e-9)
    return {"ge": bound - step, "gt": bound, "le": bound + step, "lt": bound}[key]


def _other_value(s) -> str:  # type: ignore[no-untyped-def]
    """A valid flag value (as text) that is not the setting's default: its upper bound, or another choice."""
    special = {"model": "/exports/m", "host": "0.0.0.0", "jobs_dir": "/var/jobs", "job_db": "sqlite:////var/jobs.db",
               "job_sources": "/srv/audio", "callback_allow": "https://hooks.example.com/"}  # fmt: skip
    if s.name in special:
        return special[s.name]
    if s.kind is bool:
        return "true"
    if s.choices:
        return next(c for c in s.choices if c != s.default)
    high = s.flag_bounds().get("le", s.flag_bounds().get("lt"))
    return str(int(high) if s.kind is int and s.scale == 1 else high)


def _expected(s, text: str):  # type: ignore[no-untyped-def]
    """The field's value a flag's text means, worked out here rather than by the schema."""
    from pathlib import Path

    if s.kind is bool:
        return True
    if s.repeatable:
        return (text,)
    if "Path" in str(s.owner.__annotations__.get(s.name, "")):  # model, jobs_dir, canary, collect
        return Path(text)
    if s.kind is str:
        return text
    return int(float(text) * s.scale) if s.kind is int else float(text) * s.scale


def test_every_serve_setting_is_settable_by_flag_and_by_variable():
    """Each flag of the schema, given once on the command line and once as its KORASR_ variable, reaches its field
    of ServeConfig (or Listen) in the field's unit, changed from its default; the secrets come from their variables."""
    import os

    from korasr import cli
    from korasr.serve.config import settings

    schema = settings()
    with_flags = [s for s in schema if s.flag]
    assert {s.name for s in schema} - {s.name for s in with_flags} == {"model_ref", "api_key", "callback_secret",
                                                                       "admin_key"}  # fmt: skip
    assert {"decode_threads", "max_hotwords", "job_spool_max_bytes", "job_fetch_max_bytes", "job_fetch_timeout_s",
            "job_max_attempts", "callback_max_attempts", "callback_timeout_s"} <= {s.name for s in with_flags}  # fmt: skip
    texts = {s.name: _other_value(s) for s in with_flags}
    flag_argv = ["serve"] + [part for s in with_flags for part in (s.flag, texts[s.name]) if s.kind is not bool or part == s.flag]  # fmt: skip
    by_flags = cli.build_parser().parse_args(flag_argv)
    parser = cli.build_parser()
    cli.env_defaults(cli.subparser(parser, "serve"), {s.env: texts[s.name] for s in with_flags})
    by_variables = parser.parse_args(["serve"])
    assert by_flags.follow == by_variables.follow == 86400.0  # follow_s: checked here (it needs a registry reference)
    for args in (by_flags, by_variables):
        args.follow = None  # --follow needs a registry reference; its value was checked above
        config, listen = cli.serve_settings(args)
        for s in with_flags:
            got = getattr(listen if s.name in ("host", "port", "workers") else config, s.name)
            if s.name != "follow_s":
                assert got == _expected(s, texts[s.name]) != s.default, (s.name, got)
    from korasr.serve.config import ServeConfig

    env = {"KORASR_API_KEY": "a,b", "KORASR_ADMIN_KEY": "o" * 16, "KORASR_CALLBACK_SECRET": "c" * 32}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        config = ServeConfig(model="/m")
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert [getattr(config, k).get_secret_value() for k in ("api_key", "admin_key", "callback_secret")] == [
        "a,b", "o" * 16, "c" * 32]  # fmt: skip
    assert "o" * 16 not in repr(config) and "c" * 32 not in config.to_env()


def test_every_serve_bound_refuses_with_the_settings_name():
    """Just past each bound of the schema: ServeConfig (or Listen) names the field, the flag names itself, the variable
    names itself and its flag; a value that is not one of the choices likewise."""
    import argparse

    import pytest

    from korasr import cli
    from korasr.serve.config import Listen, ServeConfig, SettingError, environment_values, settings

    checked = 0
    for s in settings():
        outside = [_outside(s, key) for key in s.bounds] + (["x"] if s.choices else [])
        for value in outside:
            owner = Listen if s.owner is Listen else ServeConfig
            required = {} if owner is Listen else {"model": "/m"}
            with pytest.raises(SettingError, match=f"serve: {s.name} "):
                owner(**required, **{s.name: value})
            if not s.flag:
                continue
            text = str(value / s.scale if isinstance(value, (int, float)) else value)
            parser = cli.build_parser()
            with pytest.raises(argparse.ArgumentError, match=s.flag):
                parser.exit_on_error = cli.subparser(parser, "serve").exit_on_error = False
                cli.subparser(parser, "serve").parse_args(["--model", "/m", s.flag, text])
            with pytest.raises(SettingError, match=f"{s.env}=.*the variable of {s.flag}"):
                environment_values({s.env: text})
            checked += 1
    assert checked >= 60  # every numeric setting has two bounds


def test_settings_page_is_generated_from_the_schema(tmp_path, monkeypatch):
    """docs/settings.md is the schema's table (python -m korasr.serve.settings_doc writes it); a stale page fails."""
    from korasr.serve import settings_doc
    from korasr.serve.config import settings

    assert settings_doc.main(["--check"]) == 0, "docs/settings.md is stale: python -m korasr.serve.settings_doc"
    page = settings_doc.PAGE.read_text()
    for s in settings():
        assert (not s.env or f"`{s.env}`" in page) and (not s.flag or f"`{s.flag}`" in page), s.name
    monkeypatch.setattr(settings_doc, "PAGE", tmp_path / "settings.md")
    (tmp_path / "settings.md").write_text(page.replace("1 to 256", "1 to 512"))
    assert settings_doc.main(["--check"]) == 1
    assert settings_doc.main([]) == 0 and settings_doc.main(["--check"]) == 0
