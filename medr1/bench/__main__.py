"""`python -m medr1.bench` (what `make bench` runs): see medr1.bench.compare."""

from medr1.bench.compare import main

if __name__ == "__main__":
    main()
