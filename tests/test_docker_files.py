"""docker/: the Apptainer definition bootstraps from the image docker/README.md builds, with the
package's version as its tag, and the Dockerfile's default base is the one the README names
(the image itself is built and run in tests/cluster/test_docker_image.py)."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(DOCKER.parent / "setup.cfg")
    return cfg["metadata"]["version"]


def test_apptainer_def_bootstraps_from_the_image_the_readme_builds():
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", (DOCKER / "apptainer.def").read_text(),
                             re.M))
    assert header == {"Bootstrap": "docker-daemon", "From": f"empo:{version()}"}
    readme = (DOCKER / "README.md").read_text()
    assert f"docker build -f docker/Dockerfile -t empo:{version()} ." in readme
    assert "apptainer build empo.sif docker/apptainer.def" in readme


def test_the_dockerfile_default_base_is_the_one_the_readme_names():
    [base] = re.findall(r"^ARG BASE_IMAGE=(\S+)", (DOCKER / "Dockerfile").read_text(), re.M)
    assert base.startswith("pytorch/pytorch:2.13.0-")
    assert f"The base is `{base}`" in (DOCKER / "README.md").read_text()
