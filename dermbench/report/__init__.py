"""Leaderboard building blocks: labels, published reference numbers, the offline HTML page.

``dermbench.leaderboard`` assembles the boards; these modules stay small and free of heavy imports.
"""
