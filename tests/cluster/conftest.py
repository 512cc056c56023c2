"""Session fixtures for the cluster tests: a real SLURM cluster with accounting, a container image.

`slurm_cluster` reuses the cluster CI started (SLURM_CONF set) or starts one with
scripts/slurm-cluster in a temp dir and stops it at the end. `container_image` builds (or reuses
from its cache) the local image with scripts/container-image and picks a runtime that runs it.
`docker_image` refreshes the image scripts/docker-image built from docker/Dockerfile; every test
here finds the checkout's tiny assets built (`smoke_assets`). All skip
with the reason where the machine lacks what they need, except under CI=true, where that is a
failure: CI installs and builds everything (scripts/ci-deps, .ci/run) and must run these tests.
"""
from __future__ import annotations

import fcntl
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT_ROOT / "scripts"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sacct", "scontrol", "scancel", "sinfo")


@pytest.fixture(autouse=True)
def smoke_assets(tiny: Path) -> Path:
    """The checkout's assets/tiny (what the smoke config names), complete before a test builds
    its graph: a graph built while they are missing or still being built (a fresh clone; another
    xdist worker building them) fingerprints other files than the jobs then see, and every stage
    the jobs finish looks finished under another identity."""
    return tiny


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail under CI=true (where the tests must run)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason} (scripts/ci-deps installs what is missing)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class SlurmCluster:
    """A running single-node cluster: node `node`, partitions `partitions` (the first is default)."""

    conf: Path                     # its slurm.conf, also in os.environ["SLURM_CONF"]
    dir: Path | None               # scripts/slurm-cluster's DIR (logs in dir/log); None if CI's
    node: str
    partitions: tuple[str, ...]
    started_here: bool

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ with SLURM_CONF (for subprocesses), plus `extra`."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}


def _cluster_shape(conf: Path) -> tuple[str, tuple[str, ...]]:
    out = subprocess.run(["sinfo", "-h", "-o", "%P %N"], capture_output=True, text=True,
                         timeout=20, env={**os.environ, "SLURM_CONF": str(conf)})
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"sinfo exited {out.returncode}")
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    parts = sorted((p for p, _ in rows), key=lambda p: not p.endswith("*"))
    return rows[0][1], tuple(p.rstrip("*") for p in parts)


def _ours(conf: str | None) -> bool:
    """SLURM_CONF names a cluster scripts/slurm-cluster wrote (never submit tests elsewhere)."""
    try:
        return bool(conf) and "Written by scripts/slurm-cluster" in Path(conf).read_text()
    except OSError:
        return False


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """The SLURM cluster the tests submit to; sets os.environ["SLURM_CONF"] for the session.

    Reuses the cluster of SLURM_CONF when scripts/slurm-cluster made it (CI's; left running),
    else starts one in a temp dir and stops it (and restores SLURM_CONF) at the end."""
    existing = os.environ.get("SLURM_CONF")
    reuse = _ours(existing)
    missing = [b for b in CLIENTS if shutil.which(b) is None]
    if not reuse:
        missing += [b for b in DAEMONS if shutil.which(b) is None]
    if missing:
        unavailable(f"SLURM binaries not found: {', '.join(missing)}")

    if reuse:
        conf = Path(existing)
        try:
            node, partitions = _cluster_shape(conf)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"SLURM_CONF={existing} is set but its cluster does not answer: {exc}",
                        pytrace=False)
        yield SlurmCluster(conf, None, node, partitions, started_here=False)
        return

    if os.geteuid() != 0:
        unavailable("starting a SLURM cluster needs root (scripts/slurm-cluster)")
    cluster_dir = tmp_path_factory.mktemp("slurm")
    script = str(SCRIPTS / "slurm-cluster")
    start = subprocess.run([script, "start", str(cluster_dir)], capture_output=True, text=True,
                           timeout=300)
    if start.returncode != 0:
        subprocess.run([script, "stop", str(cluster_dir)], timeout=120)
        pytest.fail(f"scripts/slurm-cluster start failed:\n{start.stderr}", pytrace=False)
    conf = cluster_dir / "etc" / "slurm.conf"
    os.environ["SLURM_CONF"] = str(conf)
    try:
        node, partitions = _cluster_shape(conf)
        yield SlurmCluster(conf, cluster_dir, node, partitions, started_here=True)
    finally:
        if existing is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = existing
        subprocess.run([script, "stop", str(cluster_dir)], timeout=120)


@dataclass(frozen=True)
class ContainerImage:
    """The locally built test image and a runtime that runs the project's python in it."""

    runtime: str                   # "podman" or "charliecloud": the one tests should use
    image: str                     # what cluster.container.image takes for `runtime`
    rootfs: Path                   # the image as a directory (charliecloud's image)
    podman_image: str              # localhost/empo-test
    python: str                    # the venv's python: same path inside the container
    binds: tuple[str, ...]         # SRC:DST binds that python needs (base interpreter, project)
    runtimes: tuple[str, ...]      # every runtime that worked here, best first
    env: dict[str, str] = field(default_factory=dict)  # CONTAINERS_CONF, USER (set in os.environ)

    def image_for(self, runtime: str) -> str:
        """The image reference `runtime` takes."""
        return self.podman_image if runtime == "podman" else str(self.rootfs)

    def command(self, argv: list[str], binds: tuple[str, ...] = (), workdir: str | None = None,
                runtime: str | None = None) -> list[str]:
        """argv run inside the image (env passed through), with self.binds plus `binds`."""
        runtime = runtime or self.runtime
        all_binds = (*self.binds, *binds)
        workdir = workdir or os.getcwd()
        if runtime == "podman":
            opts = [w for b in all_binds for w in ("-v", b)]
            return ["podman", "run", "--rm", "--env-host", *opts, "-w", workdir,
                    self.podman_image, *argv]
        if runtime == "charliecloud":
            opts = [w for b in all_binds for w in ("-b", b)]
            return ["ch-run", *opts, "-c", workdir, str(self.rootfs), "--", *argv]
        raise ValueError(f"unknown runtime {runtime!r} (allowed: {', '.join(self.runtimes)})")


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


def _container_cache() -> Path:
    """Where scripts/container-image and scripts/docker-image keep their builds."""
    return Path(os.environ.get("EMPO_CONTAINER_CACHE")
                or Path.home() / ".cache" / "empo" / "container")


@pytest.fixture(scope="session")
def container_image() -> ContainerImage:
    """scripts/container-image build (cached in $EMPO_CONTAINER_CACHE or ~/.cache/empo/container);
    EMPO_TEST_CONTAINER_RUNTIME picks the runtime among those that work."""
    if shutil.which("podman") is None and shutil.which("ch-run") is None:
        unavailable("no container runtime found (podman with runc, or charliecloud's ch-run)")
    cache = _container_cache()
    built = (cache / "rootfs.stamp").exists()
    if not built and (shutil.which("debootstrap") is None or os.geteuid() != 0):
        unavailable("building the test image needs root and debootstrap")
    run = subprocess.run([str(SCRIPTS / "container-image"), "build", str(cache),
                          "--venv", sys.prefix], capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        unavailable(f"scripts/container-image build failed:\n{run.stderr[-3000:]}")
    info = _parse_exports(run.stdout)
    runtimes = tuple(info["EMPO_TEST_RUNTIMES"].split())
    if not runtimes:
        unavailable(f"no container runtime runs here: {info['EMPO_TEST_RUNTIME_ERRORS']}")
    wanted = os.environ.get("EMPO_TEST_CONTAINER_RUNTIME") or runtimes[0]
    if wanted not in runtimes:
        unavailable(f"EMPO_TEST_CONTAINER_RUNTIME={wanted} does not work here: "
                    f"{info['EMPO_TEST_RUNTIME_ERRORS']}")
    env = {"CONTAINERS_CONF": info["CONTAINERS_CONF"],
           "USER": os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name}
    os.environ.update(env)  # podman needs runc + lowered ulimits; ch-run needs $USER
    rootfs = Path(info["EMPO_TEST_IMAGE_DIR"])
    podman_image = info["EMPO_TEST_PODMAN_IMAGE"]
    return ContainerImage(
        runtime=wanted,
        image=podman_image if wanted == "podman" else str(rootfs),
        rootfs=rootfs,
        podman_image=podman_image,
        python=info["EMPO_TEST_PYTHON"],
        binds=tuple(b for b in info["EMPO_TEST_BINDS"].split(",") if b),
        runtimes=runtimes,
        env=env,
    )


@dataclass(frozen=True)
class DockerImage:
    """The image built from docker/Dockerfile by scripts/docker-image (podman, stand-in base)."""

    image: str                     # localhost/empo:ci: what cluster.container.image takes
    base: str                      # the stand-in for the CUDA base it was built on


def _building(lock: Path) -> bool:
    """Whether a scripts/docker-image build holds `lock` now (its flock)."""
    try:
        with lock.open("a") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


@pytest.fixture(scope="session")
def docker_image() -> DockerImage:
    """The docker/Dockerfile image, brought up to date with the checkout (podman's layer cache:
    seconds, or about 30 s when empo/ changed). Its first build (about 7 min) is CI's (.ci/run,
    in the background while the tests run: then this waits for it on the build's lock): where it
    was never built, or podman is absent, the tests skip with the reason."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        unavailable("podman with runc not found (scripts/ci-deps installs them)")
    cache = _container_cache()
    if not (cache / "docker-image.stamp").exists() and not _building(cache / ".docker-lock"):
        unavailable(f"no docker/Dockerfile image built here yet: run scripts/docker-image build "
                    f"{cache} (about 7 min on 2 cores; .ci/run does)")
    run = subprocess.run([str(SCRIPTS / "docker-image"), "build", str(cache)], capture_output=True,
                         text=True, timeout=1800)
    if run.returncode != 0:  # it built here before: a failure now is the checkout's
        pytest.fail(f"scripts/docker-image build failed:\n{run.stderr[-3000:]}", pytrace=False)
    info = _parse_exports(run.stdout)
    os.environ["CONTAINERS_CONF"] = info["CONTAINERS_CONF"]  # runc + lowered ulimits
    return DockerImage(image=info["EMPO_TEST_DOCKER_IMAGE"], base=info["EMPO_TEST_DOCKER_BASE"])
