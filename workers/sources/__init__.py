"""Read rows from a dataset job's source: an uploaded file, a Hugging Face Hub dataset, or a local directory
shaped like a Hub dataset repository. The package holds one module per concern: `files` (uploads: `jsonl`,
`json_array`, Parquet and CSV), `hub` and `local`; `common` has the row type and `SourceError`.

Every reader is a generator of `Row = (number, row)` pairs, streaming and memory-flat (no reader ever lists a
whole source). What `number` means, per source — it is also what `SourceError.line` holds:

- JSONL and CSV: the 1-based physical line of the file where the row starts (blank lines are skipped but
  counted; the CSV header is line 1).
- JSON (one array of objects): the 1-based position of the element in the array.
- Parquet, Hub and local datasets: the 1-based row number in the file / split.

A source that cannot be read raises `SourceError` with a stable `code` and a `message` a person can act on.
Messages never carry a stack trace, a token or a server-side file path (upload errors name lines, not paths).

Errors in the arguments (`unsupported_format`, `bad_name`, and for local directories `dataset_not_found`,
`bad_config`, `bad_split`) are raised by the call itself; everything else while iterating. `retryable` is True
only when the Hub could not be reached over the network (not in offline mode) or answered 429/5xx.

Codes: `unsupported_format`, `file_not_found`, `bad_file`, `invalid_utf8`, `line_too_long`,
`too_deeply_nested`, `not_an_object`, `invalid_json`, `bad_name`, `hub_unreachable`, `dataset_not_found`,
`dataset_gated`, `bad_revision`, `bad_config`, `bad_split`, `no_data_files`.

Hub notes (datasets 5 / huggingface_hub 1.x, measured on a machine without network):

- Both libraries read `HF_HUB_OFFLINE` once, at import. With it set before import, `load_dataset` fails in ~2 ms
  with `ConnectionError("Couldn't reach 'org/name' on the Hub (OfflineModeIsEnabled)")`; we map that. If the
  variable is set only after import (the libraries would not notice and go to the network), we honour it
  ourselves and fail at once without touching the network.
- With no network and no offline flag, `load_dataset` retries the README download five times with backoff
  (1+2+4+8+8 s) and fails after ~23 s. To bound that, `iter_hub_rows` first sends one HEAD request to the Hub
  endpoint through huggingface_hub's own HTTP session (same proxies/TLS settings) on a helper thread, with a
  `connect_timeout` (default 10 s) that also bounds DNS; no answer -> `hub_unreachable` (retryable) at once
  (here: DNS fails in ~2 ms; a silent endpoint costs `connect_timeout`). Any HTTP answer counts as reachable.
- Each streaming load gets a throw-away `cache_dir` (see `_scratch_cache`).
- Hub names are loaded as `hf://datasets/<name>` so a name can never resolve to a local directory or to one of
  the `datasets` packaged builders (`json`, `csv`, ...), and names are validated as repo ids first.
"""

from workers.sources.common import Row, SourceError
from workers.sources.files import (
    FILE_FORMATS,
    iter_csv,
    iter_file_rows,
    iter_json_array,
    iter_jsonl,
    iter_parquet,
)
from workers.sources.hub import iter_hub_rows
from workers.sources.local import iter_local_dataset_rows

__all__ = [
    "Row",
    "SourceError",
    "iter_file_rows",
    "iter_jsonl",
    "iter_json_array",
    "iter_parquet",
    "iter_csv",
    "iter_hub_rows",
    "iter_local_dataset_rows",
    "FILE_FORMATS",
]
