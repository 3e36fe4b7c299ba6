"""Gateway: serves models resolved from registry aliases and hot-swaps them on reload notices."""
