"""support: a customer-service assistant (issue 12). Built so far: the typed config (config.py),
`tailor support train` (train.py: the intent model through the fine-tuning engine, the knowledge
index, the hand-off threshold calibrated for a target out-of-scope recall), the Assistant
(assistant.py: template -> extractive retrieval answer -> hand-off), `tailor support evaluate`
(evaluate.py), the knowledge base (knowledge.py) and retrieval (retrieval.py: BM25, dense,
hybrid). Chat, the service, sessions/tickets and generated answers come next. See
docs/support.md."""
