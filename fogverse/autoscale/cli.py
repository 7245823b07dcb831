"""``fogverse master --config master.yaml``: run an auto-scaling master.

The YAML file holds a ``MasterAutoScalerConfig`` (worker names as strings) plus a
``deploy_scripts`` section (see :func:`fogverse.autoscale.deploy.build_deploy_scripts`).
``consumer_server`` defaults to ``FOGVERSE_BOOTSTRAP``. SIGINT/SIGTERM stop the master cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from fogverse.autoscale.config import ConfigError
from fogverse.autoscale.deploy import DeployScripts, build_deploy_scripts
from fogverse.config import default_servers

__all__ = ["load_config", "main", "register"]

logger = logging.getLogger(__name__)


def load_config(path: str | Path) -> tuple[dict[str, Any], DeployScripts]:
    """Read ``master.yaml``: the master's configuration and its deploy scripts."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is in the autoscale extra
        raise ConfigError(["reading master.yaml needs PyYAML: pip install pyyaml"]) from exc
    try:
        conf = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"cannot read {path}: {exc}"]) from exc
    if not isinstance(conf, dict):
        raise ConfigError([f"{path} must hold a mapping"])
    spec = conf.pop("deploy_scripts", None) or {}
    if not isinstance(spec, dict):
        raise ConfigError(["deploy_scripts must be a mapping of provider -> settings"])
    try:
        scripts = build_deploy_scripts(spec)
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        raise ConfigError([f"deploy_scripts: {exc}"]) from exc
    conf.setdefault("consumer_server", default_servers())
    return conf, scripts


def _run(args: argparse.Namespace) -> int:
    from fogverse.app import run
    from fogverse.autoscale.component import AutoScaleComponent

    try:
        conf, scripts = load_config(args.config)
        master = AutoScaleComponent().master_auto_scaler(conf, scripts)
        # A file is all this master will ever have: nothing can register functions later.
        if master.deployer is not None and not scripts:
            raise ConfigError(
                ["AUTO_DEPLOYER needs deploy scripts: add a deploy_scripts section to the file"]
            )
    except ConfigError as exc:
        print(f"fogverse master: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: configuration OK ({', '.join(sorted(master.settings.workers))})")
        return 0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, master.stop)
        await master.run()

    run(main())
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="master.yaml")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration and exit (status 2 if invalid)",
    )
    parser.set_defaults(func=_run)


def register(subparsers: Any) -> None:
    """Add ``master`` to the ``fogverse`` command's sub-commands."""
    _arguments(
        subparsers.add_parser(
            "master",
            help="run an auto-scaling master",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m fogverse.autoscale.cli --config master.yaml`` (same as ``fogverse master``)."""
    parser = argparse.ArgumentParser(
        prog="fogverse master",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
