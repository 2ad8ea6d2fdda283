"""The only Kafka wiring: the Faust app, its topics, tables, agents and web views."""
