"""What an epoch's files mean: the generic CSV API and (next) the account store."""
