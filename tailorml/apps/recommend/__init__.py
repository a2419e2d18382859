"""The recommender app (`tailor recommend`): behaviour logs + item text -> ranked items, served."""
