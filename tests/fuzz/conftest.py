"""The fuzz suite: one property per reader of a user's file. A structured mutation of a valid file is read; the
reader returns a valid result or raises a CrossgraftError (one line for the user) — never another exception, and
never past the deadline. FUZZ_EXAMPLES (default 200) sets the examples per reader."""
