"""Pure logic of the registry watcher: signature checks, payload parsing, alias diffs. No I/O."""
