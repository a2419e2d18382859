"""support: a customer-service assistant (issue 12). Built so far: the knowledge base
(knowledge.py: a folder of .md / .txt articles -> documents -> passages) and retrieval over it
(retrieval.py: BM25, dense, hybrid; evaluate.py: recall@k and MRR). The intent model, templates,
grounded answers, hand-off and the service come next. See docs/support.md."""
