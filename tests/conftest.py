import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="clearclip-tests-"))
os.environ.setdefault("CLEARCLIP_CACHE_DIR", str(_SESSION_TMP / "cache"))
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_PLUGINS_DIR"] = str(Path(__file__).resolve().parents[1] / "clearclip" / "review" / "plugins")
sys.path.insert(0, str(Path(__file__).parent))

from private_mongo import start_private_mongod  # noqa: E402
from tiny_model import build_tiny_model, save_local_dir  # noqa: E402

# FiftyOne would attach to any database service already running here; the tests get a server of their own.
_MONGOD = start_private_mongod(_SESSION_TMP / "fiftyone-db")

SHARED = Path(__file__).resolve().parents[1] / "workspace"


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_dir(tiny_model, tmp_path_factory):
    """A ``local-dir:`` checkpoint of the tiny model, loaded the way users load real weights."""
    return save_local_dir(tiny_model, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model_name(tiny_dir):
    return f"local-dir:{tiny_dir}"


@pytest.fixture(scope="session")
def object_store():
    """One SeaweedFS S3 server for the session, on free ports, its data in the session's temp folder."""
    from object_store import start_object_store

    store = start_object_store(_SESSION_TMP / "seaweedfs")
    yield store
    store.stop()


@pytest.fixture
def bucket(object_store, request):
    """A new, empty bucket for one test: ``s3://<name>``."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid() % 10000}"
    fs = object_store.filesystem()
    if fs.exists(name):
        fs.rm(name, recursive=True)
    return object_store.bucket(name)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for the session (it takes seconds to start)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):  # 23 s idle here, past its 30 s beside a busy suite
        yield


def pytest_unconfigure(config):
    _MONGOD.terminate()
    _MONGOD.wait(30)
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
