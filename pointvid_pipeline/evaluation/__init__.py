"""Ground-truth metrics and the paper-literal reference implementations the benchmarks compare against."""
