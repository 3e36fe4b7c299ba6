"""The pure core of the retrainer: quality gates (`gates`) and dataset rows -> training examples
(`examples`); no I/O. Import from the submodules."""
