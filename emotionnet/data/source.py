"""Find the Arrow dataset to train on: a prepared directory, or a CSV prepped into a sha256-keyed cache."""

from __future__ import annotations

import logging
from pathlib import Path

from data_prep.files import file_sha256
from data_prep.manifest import Manifest
from data_prep.prepare import PrepOptions, prepare
from data_prep.records import PrepError
from data_prep.schema import MANIFEST_NAME
from emotionnet.data.loaders import DataConfig
from emotionnet.errors import UserError

log = logging.getLogger(__name__)

# The seed project's default CSV location, used when nothing else is configured.
SEED_DEFAULT_CSV = "dataset/fer2013/fer2013.csv"


class DataSourceError(UserError):
    """Neither a prepared dataset nor a CSV to prepare was found."""


def is_prepared(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST_NAME).is_file()


def resolve_data_dir(cfg: DataConfig) -> Path:
    """`data.csv_file` if set (prepped into the cache), else a prepared `data.data_dir`, else the seed's CSV."""
    if cfg.csv_file is None and is_prepared(cfg.data_dir):
        return Path(cfg.data_dir)
    csv = Path(cfg.csv_file or SEED_DEFAULT_CSV)
    if not csv.is_file():
        raise DataSourceError(
            f"no prepared dataset at {cfg.data_dir} and no CSV at {csv}: run `emotionnet-prep CSV {cfg.data_dir}` "
            "or pass --csv_file (try `emotionnet-synth demo.csv` for synthetic data)"
        )
    return prepared_cache(csv, Path(cfg.prep_cache_dir))


def prepared_cache(csv: Path, cache_root: Path) -> Path:
    """Prep `csv` once into `<cache_root>/<sha256[:16]>/`; later runs with the same bytes reuse it."""
    sha = file_sha256(csv)
    target = cache_root / sha[:16]
    cached = Manifest.read(target) if is_prepared(target) else None
    # A cache an older prep wrote without shard sizes and hashes is prepared again, so that it is checked.
    if cached is not None and cached.source.sha256 == sha and cached.records_shards:
        log.info("using prepared cache %s for %s", target, csv)
        return target
    log.info("preparing %s into cache %s", csv, target)
    cache_root.mkdir(parents=True, exist_ok=True)
    try:
        # The hint names what training has: emotionnet-prep's quarantine, then data.data_dir.
        hint = (
            f"set them aside with `emotionnet-prep {csv} DIR --on-bad-rows quarantine`, then train on DIR "
            "with data.data_dir=DIR (or --data_dir DIR) instead of the CSV"
        )
        prepare(csv, target, PrepOptions(overwrite=True, bad_rows_hint=hint))
    except PrepError as err:
        raise DataSourceError(str(err)) from err
    return target
