"""One module per dataset (a DatasetSpec named SPEC): where its text comes from and how it is split; everything
after that is data_prep.steps. data_prep.registry lists them."""
