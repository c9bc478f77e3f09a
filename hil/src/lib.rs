//! Hardware-in-the-loop harness (placeholder until the HIL issue; see README).
