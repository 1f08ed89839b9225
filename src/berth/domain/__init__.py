"""Pure rules: statuses, their transitions and the delivery and drain policies. No I/O."""
