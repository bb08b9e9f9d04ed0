"""Stubs generated from ``proto/kinodb/v1/kinodb.proto`` by ``scripts/gen_proto.sh``; do not edit."""
