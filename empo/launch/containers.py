"""Container runtimes for jobs (`cluster.container`: runtime, image, binds).

apptainer, podman and charliecloud wrap the job's Python through submitit's `python=` prefix
(written unquoted into the job script, so every value goes through `quoting.shell_word`); pyxis
goes through srun's `--container-image`/`--container-mounts` (submitit quotes srun arguments). The job
folder, the results directory and the project root are always bound, at the same path. Inside the
container the job runs the host venv's Python when that venv is bound in (a dev image with the
project mounted), else the image's `python` (an image with EmPO installed: docker/Dockerfile).
"""
from __future__ import annotations

import getpass
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from empo.config import RUNTIMES, ExperimentConfig
from empo.errors import LaunchError
from empo.executors import EXECUTORS
from empo.hub import hub_binds
from empo.launch.backends import backend
from empo.quoting import shell_word

log = logging.getLogger(__name__)

# Host variables a job needs inside podman (trailing * = every variable with that prefix).
PODMAN_ENV = ("SLURM_*", "SUBMITIT_*", "EMPO_*", "HF_*", "TORCH_*", "NCCL_*", "CUDA_*", "NVIDIA_*",
              "OMP_NUM_THREADS", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
              "LOCAL_WORLD_SIZE", "GROUP_RANK", "PYTHONPATH", "PYTHONHASHSEED", "TRANSFORMERS_*",
              "TOKENIZERS_*")
BINARIES = {"apptainer": ("apptainer", "singularity"), "podman": ("podman",),
            "charliecloud": ("ch-run",), "pyxis": ("srun",)}


@dataclass(frozen=True)
class ContainerCommand:
    """How a job enters the container: submitit's python= prefix and extra srun arguments."""

    python: str | None = None          # None: this interpreter (sys.executable), no container
    srun_args: tuple[str, ...] = ()


def _binary(runtime: str) -> str | None:
    for name in BINARIES.get(runtime, ()):
        if shutil.which(name):
            return name
    return None


def image_path(cfg: ExperimentConfig) -> str | None:
    """The image as the runtime gets it: local paths made absolute, references kept."""
    image = cfg.cluster.container.image
    if image is None:
        return None
    if _is_reference(cfg.cluster.container.runtime, image):
        return image
    return str(cfg.resolve(image))


def _is_reference(runtime: str, image: str) -> bool:
    """A registry/storage name rather than a file or directory on disk."""
    if "://" in image or "#" in image:          # docker://..., oras://..., pyxis nvcr.io#repo
        return True
    if runtime == "podman":
        return True                              # podman names images (localhost/empo:1)
    if runtime in ("charliecloud", "pyxis"):
        return not (image.startswith((".", "/", "~")) or image.endswith((".sqfs", ".sqsh")))
    return False                                 # apptainer: a .sif file or a sandbox directory


def check_container(cfg: ExperimentConfig, executor: str) -> None:
    """LaunchError for an unknown runtime, a missing image or a runtime this executor can't use."""
    container = cfg.cluster.container
    runtime = container.runtime
    if runtime not in RUNTIMES:
        raise LaunchError(f"cluster.container.runtime: unknown runtime {runtime!r}; "
                          f"allowed: {', '.join(RUNTIMES)}")
    if runtime == "none":
        return
    chosen = backend(executor)
    if chosen.in_process:
        log.warning("the %s executor runs stages in this process: cluster.container "
                    "(runtime %s) is ignored", executor, runtime)
        return
    if not container.image:
        raise LaunchError(f"cluster.container.image is required with runtime {runtime!r} "
                          "(a .sif file, an image directory or an image name)")
    if runtime not in chosen.runtimes:
        able = [name for name in EXECUTORS if runtime in backend(name).runtimes]
        raise LaunchError(f"cluster.container.runtime {runtime}: the {executor} executor cannot "
                          f"start it; use --executor "
                          f"{' or '.join(able)}, or runtime "
                          f"{'/'.join(r for r in chosen.runtimes if r != 'none')} with {executor}")
    image = image_path(cfg)
    if not _is_reference(runtime, container.image) and not Path(image).exists():
        raise LaunchError(f"cluster.container.image: {image} does not exist "
                          f"(runtime {runtime}; build it first, see docker/README.md)")
    binary = _binary(runtime)
    if binary is None:
        names = " or ".join(BINARIES[runtime])
        if chosen.remote:  # a login node may lack the runtime its compute nodes have
            log.warning("%s not found on this machine; the compute nodes must have it", names)
            return
        raise LaunchError(f"cluster.container.runtime {runtime}: {names} not found on PATH")
    if runtime == "podman":
        found = subprocess.run([binary, "image", "exists", container.image],
                               capture_output=True, timeout=60)
        if found.returncode != 0:
            raise LaunchError(f"cluster.container.image: podman has no image {container.image!r} "
                              "(podman images lists those it has)")


def bind_pairs(cfg: ExperimentConfig, always: Iterable[Path]) -> list[tuple[str, str, str]]:
    """(source, target, options) for the config's binds plus `always` (same path inside)."""
    pairs: list[tuple[str, str, str]] = []
    for spec in cfg.cluster.container.binds:
        parts = spec.split(":")
        if len(parts) > 3 or not parts[0]:
            raise LaunchError(f"cluster.container.binds: {spec!r} is not SRC[:DST[:OPTIONS]]")
        source = str(cfg.resolve(parts[0]))
        target = parts[1] if len(parts) > 1 and parts[1] else source
        pairs.append((source, target, parts[2] if len(parts) > 2 else ""))
    targets = {target for _, target, _ in pairs}
    for path in always:
        path = str(Path(path).resolve())
        if path not in targets and not any(path.startswith(t.rstrip("/") + "/") for t in targets):
            pairs.append((path, path, ""))
            targets.add(path)
    return pairs


def _inner_python(pairs: list[tuple[str, str, str]]) -> str:
    """The host venv's Python when the venv is bound at the same path, else the image's."""
    prefix = str(Path(sys.prefix).resolve())
    for source, target, _ in pairs:
        if source == target and (prefix == source or prefix.startswith(source.rstrip("/") + "/")):
            return sys.executable
    return "python"


def container_command(cfg: ExperimentConfig, always_bind: Iterable[Path],
                      gpus: bool) -> ContainerCommand:
    """The python= prefix / srun arguments running a job inside `cluster.container`."""
    runtime = cfg.cluster.container.runtime
    if runtime == "none":
        return ContainerCommand()

    pairs = bind_pairs(cfg, [*always_bind, *hub_binds(cfg)])  # offline jobs read the Hub cache
    image = image_path(cfg)
    python = _inner_python(pairs)
    q = shell_word  # the one quoting function (refuses control characters)

    def spec(source: str, target: str, options: str) -> str:
        return ":".join(p for p in (source, target, options) if p)

    if runtime == "apptainer":
        binary = _binary("apptainer") or "apptainer"
        words = [binary, "exec"] + (["--nv"] if gpus else [])
        if pairs:
            words += ["--bind", ",".join(spec(*p) for p in pairs)]
        return ContainerCommand(" ".join(map(q, words + [image, python])))
    if runtime == "podman":
        words = ["podman", "run", "--rm", "--network", "host", "--ipc", "host",
                 "--security-opt", "label=disable"]
        for pattern in PODMAN_ENV:  # not --env-host: it would replace the image's PATH
            words += ["--env", pattern]
        for pair in pairs:
            words += ["-v", spec(*pair)]
        if gpus:
            words += ["--device", "nvidia.com/gpu=all"]
        return ContainerCommand(" ".join(map(q, words + [image, python])))
    if runtime == "charliecloud":  # ch-run needs $USER, which batch environments may lack
        words = ["env", f"USER={getpass.getuser()}", "ch-run"]
        for source, target, _ in pairs:
            words += ["-b", f"{source}:{target}"]
        return ContainerCommand(" ".join(map(q, words + [image, "--", python])))
    if runtime == "pyxis":
        args = [f"--container-image={image}"]
        if pairs:
            args.append("--container-mounts=" + ",".join(spec(*p) for p in pairs))
        return ContainerCommand(q(python), tuple(args))
    raise LaunchError(f"cluster.container.runtime: unknown runtime {runtime!r}; "
                      f"allowed: {', '.join(RUNTIMES)}")
