//! Replays fuzz/corpus (written by the fuzzing helper).
