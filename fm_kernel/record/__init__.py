"""The durable record (named `record`, not `history`, so that it never shadows
the public function `fm.history()`): one DuckDB history per notebook and the object files
beside it. ``store`` is the only module in the package that imports duckdb;
everything else here (where the history lives, how a cell becomes a record,
user SQL, bundles) calls it by method name."""
