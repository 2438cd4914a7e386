"""The lab: experiments and research tools on top of deltamem_agents; never imported by the product."""
