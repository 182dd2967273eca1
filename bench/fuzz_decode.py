"""The large decode-robustness campaign of docs/reliability.md: mutated image files, each must give a score or an
error row within bounded memory (`icthp_core.testing.fuzz.run`; tests/core/data/test_reliability_fuzz.py runs a
bounded one).

    python bench/fuzz_decode.py --count 24000 --seed 1
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> dict:
    from icthp_core.testing.fuzz import run

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000, help="mutated files (2000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    res = run(args.count, args.seed)
    print(json.dumps({k: v for k, v in res.items() if k != "errors_by_file"}, indent=1))
    return res


if __name__ == "__main__":
    main()
