"""HTVS campaigns: screen a pool with ESNet, relax in rounds, count the DFT spent and the stable found.

- `pool`: the candidates (compositions, DFT wall times in s, predictions in eV/atom, replay truths)
- `strategies`: acquisition rules (stable_per_cost, greedy, lcb, random, composition, uip, oracle)
- `hull`: references + relaxed candidates, one pymatgen PhaseDiagram per chemical system
- `engine`: `CampaignConfig`, `run_campaign` (rounds, atomic per-round state, resume, stops)
- `report`: strategies compared (cost to 50/90/100 % of the stable, fraction of the oracle's saving), JSON, PNG
- `live`: a live pool (GPAW IS single points + an ESNet model) and the GPAW relaxer
- `refit`: `ESNetFineTune`, retraining the model on the relaxed candidates each round
- `hypothetical`: the replay on `esnet dft pool`'s pool (hull-complete candidates, demo + pool references,
  out-of-sample CHGNet and composition sources)

    from esnet_tf.campaign import CampaignConfig, pool_from_labels, run_campaign
    pool = pool_from_labels(["labels.csv"], predictions={"esnet": "oof_predictions.csv"})
    res = run_campaign(pool, CampaignConfig(strategy="lcb", batch_size=10), "campaign/lcb")

Energies in eV/atom, costs in s (and relaxation equivalents). Docs: docs/campaign.md.
"""
from esnet_tf.campaign.engine import (CampaignConfig, CampaignResult, expected_stable, replay_relaxer,
                                      residual_refit, run_campaign)
from esnet_tf.campaign.pool import Pool, Predictions, elemental_references, pool_from_labels, read_predictions
from esnet_tf.campaign.strategies import PAYS_IS, STRATEGIES

__all__ = ["CampaignConfig", "CampaignResult", "PAYS_IS", "Pool", "Predictions", "STRATEGIES",
           "elemental_references", "expected_stable", "pool_from_labels", "read_predictions", "replay_relaxer",
           "residual_refit", "run_campaign"]
