"""Speed and memory benchmarks (see DESIGN.md); results are written under reports/benchmarks/."""
