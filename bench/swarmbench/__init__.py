"""The pyswarm-vs-Docker-Swarm benchmark harness (issue 7).

Entry point: ``bench/swarm_vs_pyswarm.py`` (``make bench``). The modules:

- ``engines``: count running containers on every lab host's engine, sampled
  over time (what "running" means here: the engines' view, not an
  orchestrator's);
- ``clusters``: the two orchestrators behind one small interface, formed on
  the same lab hosts;
- ``scenarios``: one function per scenario, each measuring both
  orchestrators one after the other;
- ``footprint``: the pyswarm leader's RSS and CPU under simulated nodes;
- ``report``: pure figures and formatting (median, min-max, ratio, the
  Markdown table, the JSON record);
- ``plot``: the PNG curves (matplotlib, the optional ``bench`` extra).
"""
