"""The contract over every first-party operation, through the public parametrization."""

from tapegrad.testing import parametrize_operations


@parametrize_operations(plugin=["math", "activations", "layers", "losses"])
def test_first_party_contract(operation, check):
    check(operation)
