"""Inference side of the kit: answer extraction, voting, time budget, engines, the Kaggle-facing server."""
