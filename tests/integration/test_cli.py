"""Bad input ends the command with exit 2, one line on stderr, and no run left behind."""

import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import cli
from tests.conftest import PROJECT_ROOT, german_like, small_params

pytestmark = pytest.mark.integration


def run_cli(config_path, *extra, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "research", "--quiet", "--config", str(config_path), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def write_config(tmp_path, raw):
    dataset = raw["dataset"]
    if not str(dataset["path"]).startswith("/"):
        dataset["path"] = str(PROJECT_ROOT / dataset["path"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def with_data(tmp_path, csv_text, **dataset):
    data = tmp_path / "loans.csv"
    data.write_text(csv_text)
    raw = small_params()
    raw["dataset"].update({"path": str(data), **dataset})
    return write_config(tmp_path, raw)


GERMAN = (PROJECT_ROOT / "data" / "german_credit.csv").read_text()


@pytest.mark.parametrize(
    ("make_config", "message"),
    [
        (lambda t: with_data(t, ""), "dataset file loans.csv is empty"),
        (lambda t: with_data(t, "a,default\n"), "dataset is empty"),
        (lambda t: with_data(t, GERMAN, target="risk"), "target column 'risk' not found"),
        (lambda t: with_data(t, "a,default\n1,1\n2,1\n"), "single class"),
        (lambda t: with_data(t, "a,default\n1,1\n2,0\n3,2\n"), "3 classes"),
        (lambda t: with_data(t, "a,default\n1,1\n2,\n3,0\n"), "missing values"),
        (lambda t: with_data(t, "a,a,default\n1,2,1\n"), "duplicate column names"),
        (lambda t: with_data(t, "a,b,default\n1,,1\n2,,0\n"), "'b' is entirely empty: add to dataset.drop"),
        (lambda t: with_data(t, "a,default\n1,1\ninf,0\n"), "infinite values"),
        (
            lambda t: with_data(t, "a,default\n" + "".join(f"{i % 7},{int(i < 3)}\n" for i in range(40))),
            "fewer than research.cv_folds=3",
        ),
        (lambda t: write_config(t, {**small_params(), "surprise": 1}), "surprise: unknown key"),
        (
            lambda t: write_config(t, small_params(research={"cv_folds": "many"})),
            "research.cv_folds",
        ),
        (lambda t: write_config(t, small_params(split={"test_size": 2})), "split.test_size"),
        (lambda t: t / "absent.yaml", "cannot read config file"),
        (
            lambda t: write_config(
                t, small_params(dataset={"path": str(t / "nowhere.csv"), "target": "default"})
            ),
            "dataset file not found",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, sqlite_store, make_config, message, capsys):
    # In process (the command's own entry point) to spare an interpreter per case; the test below runs
    # one case as its own process.
    code = cli.main(["research", "--quiet", "--config", str(make_config(tmp_path))])
    check_one_line_and_no_run(code, capsys.readouterr().err, message, sqlite_store)


def test_bad_input_exits_2_with_one_line_from_its_own_process(tmp_path, sqlite_store):
    completed = run_cli(with_data(tmp_path, "a,default\n1,1\n2,1\n"))
    check_one_line_and_no_run(completed.returncode, completed.stderr, "single class", sqlite_store)


def check_one_line_and_no_run(code: int, stderr: str, message: str, store: str) -> None:
    assert code == 2, stderr
    # One line for the error; a warning about the data may come first (3 defaults in 40 rows here).
    lines = [line for line in stderr.strip().splitlines() if " WARNING pipeline.data: " not in line]
    assert len(lines) == 1, stderr
    assert message in lines[0]
    assert "Traceback" not in stderr
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("loan-default")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    assert all(r.info.status == "FAILED" for r in runs)


def test_unreachable_tracking_database(tmp_path, monkeypatch):
    raw = small_params(tracking={"connect_retries": 1, "connect_backoff_seconds": 0.1})
    config = write_config(tmp_path, raw)
    env = {
        **__import__("os").environ,
        "MLFLOW_TRACKING_URI": "postgresql+psycopg2://loan:s3cretpw@127.0.0.1:9/mlflow",
    }
    completed = run_cli(config, env=env)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracking store unreachable: cannot reach"), (
        completed.stderr
    )
    assert "s3cretpw" not in completed.stderr and "loan:***@" in completed.stderr


# --- a hostile table through the command ---------------------------------------------------------------

TARGET = "default"


def test_hostile_file_through_the_command(tmp_path, sqlite_store):
    data = tmp_path / "hostile.csv"
    frame = german_like(60)
    frame["amount"] = frame["amount"].astype(object)
    frame.loc[5, "amount"] = "1e400"  # overflows to infinity
    frame.to_csv(data, index=False)
    raw = small_params(dataset={"path": str(data), "target": TARGET})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline", "research", "--config", str(tmp_path / "params.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert lines == ["data error: column 'amount' holds infinite values"], completed.stderr
