"""Inspection tools over a finished or running run directory: the HTML viewer, the Markdown report, the LEMUR export
and the generator fine-tuning data.

They read what the engine (`nncaption.graph`) wrote, through `nncaption.graph.trace.RunReader`, and never write into
the run; the engine never imports them.
"""
