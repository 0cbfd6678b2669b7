"""The embedded driving world: scenarios, expert, renderer, dataset export, scoring, closed loop."""
