"""Pure gateway logic: input validation against a model signature, routing decisions (no I/O)."""
