"""The metric probability path (beta_t, velocity) and its clocks: time grid and frame-wise schedules."""
