"""The HTTP edge: parse input, call one service, render output."""
